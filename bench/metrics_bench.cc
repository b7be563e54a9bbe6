// What recording costs on the hot path (Google Benchmark): a counter increment, a histogram
// observation, one operation through a communicator's flight recorder and metrics (enqueue,
// start, end), the health layer's per-step work (a straggler score update over 4 ranks), and a
// render of a registry as large as a rank's. Multiply by the operations a step issues (a
// scrape of a running job shows tenax_comm_operations_total) to get the cost per step.

#include <ATen/ops/ones.h>
#include <benchmark/benchmark.h>

#include "comm/op_trace.h"
#include "tenax/health/replica_hash.h"
#include "tenax/health/straggler.h"
#include "tenax/core/metrics.h"

namespace {

void BM_CounterInc(benchmark::State& state) {
  tenax::metrics::Counter& c = tenax::metrics::registry().counter("bench_counter_total", "x");
  for (auto _ : state) c.inc();
  benchmark::DoNotOptimize(c.value());
}
BENCHMARK(BM_CounterInc);

void BM_HistogramObserve(benchmark::State& state) {
  auto& h = tenax::metrics::registry()
                .family("bench_seconds", "x", tenax::metrics::Type::kHistogram)
                .histogram();
  double v = 0.0001;
  for (auto _ : state) {
    h.observe(v);
    v = v > 10 ? 0.0001 : v * 1.7;
  }
}
BENCHMARK(BM_HistogramObserve);

void BM_OpTraceOneOperation(benchmark::State& state) {
  tenax::detail::OpTrace trace("bench/g1/world", 0, 4);
  uint64_t seq = 0;
  for (auto _ : state) {
    const uint64_t id = trace.enqueued(tenax::detail::OpKind::kAllReduce, seq++,
                                       c10::ScalarType::Float, 1 << 20, 4 << 20, -1);
    trace.started(id);
    trace.ended(id, nullptr);
  }
}
BENCHMARK(BM_OpTraceOneOperation);

void BM_StragglerScoreOneStep(benchmark::State& state) {
  tenax::StragglerDetector d(1.5, 10, 5);
  std::vector<double> compute = {0.1, 0.11, 0.12, 0.1};
  for (auto _ : state) benchmark::DoNotOptimize(d.add(compute));
}
BENCHMARK(BM_StragglerScoreOneStep);

// The replica comparison's hash over a state as large as the tiny preset's on one rank
// (parameters and AdamW moments: about 10 MiB), done once every --hash-every steps.
void BM_StateHash10MiB(benchmark::State& state) {
  tenax::StateDict dict;
  for (int i = 0; i < 10; ++i) dict.add("t" + std::to_string(i), at::ones({262144}));
  for (auto _ : state) benchmark::DoNotOptimize(tenax::state_hash(dict));
  state.SetBytesProcessed(state.iterations() * dict.tensor_bytes());
}
BENCHMARK(BM_StateHash10MiB)->Unit(benchmark::kMillisecond);

void BM_RenderRegistry(benchmark::State& state) {
  tenax::metrics::Registry r;
  r.set_constant_label("job", "bench");
  r.set_constant_label("rank", "3");
  auto& ops = r.family("b_ops_total", "x", tenax::metrics::Type::kCounter, {"op", "group"});
  auto& secs = r.family("b_op_seconds", "x", tenax::metrics::Type::kHistogram, {"op", "group"});
  for (int g = 0; g < 8; ++g) {
    for (const char* op : {"all_reduce", "broadcast", "send", "recv", "barrier"}) {
      ops.counter({op, "group" + std::to_string(g)}).inc(g);
      secs.histogram({op, "group" + std::to_string(g)}).observe(0.001 * g);
    }
  }
  size_t bytes = 0;
  for (auto _ : state) bytes = r.render().size();
  state.counters["bytes"] = static_cast<double>(bytes);
}
BENCHMARK(BM_RenderRegistry);

}  // namespace

BENCHMARK_MAIN();
