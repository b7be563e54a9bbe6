// Micro-benchmarks of the element-wise reduction kernels the CPU collectives run on every
// received chunk, side by side with LibTorch's own add (the reference) on the same buffers.
//
//   build/bench/tenax-kernels-bench --benchmark_repetitions=5 --benchmark_report_aggregates_only

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <benchmark/benchmark.h>

#include "comm/reduce_kernels.h"

namespace {

void args(benchmark::internal::Benchmark* b) {
  for (int64_t n : {1 << 12, 1 << 18, 1 << 22}) b->Arg(n);
}

template <at::ScalarType D>
void BM_TenaxSumKernel(benchmark::State& state) {
  const int64_t n = state.range(0);
  at::Tensor a = at::rand({n}).to(D), b = at::rand({n}).to(D), out = at::empty_like(a);
  tenax::detail::ReduceFn fn = tenax::detail::reduce_kernel(D, tenax::ReduceOp::kSum);
  for (auto _ : state) {
    fn(out.data_ptr(), a.data_ptr(), b.data_ptr(), n);
    benchmark::DoNotOptimize(out.data_ptr());
  }
  state.SetBytesProcessed(state.iterations() * n * a.element_size() * 3);
}

template <at::ScalarType D>
void BM_TorchAddReference(benchmark::State& state) {
  const int64_t n = state.range(0);
  at::set_num_threads(1);
  at::Tensor a = at::rand({n}).to(D), b = at::rand({n}).to(D), out = at::empty_like(a);
  for (auto _ : state) {
    at::add_out(out, a, b);
    benchmark::DoNotOptimize(out.data_ptr());
  }
  state.SetBytesProcessed(state.iterations() * n * a.element_size() * 3);
}

BENCHMARK_TEMPLATE(BM_TenaxSumKernel, at::kFloat)->Apply(args);
BENCHMARK_TEMPLATE(BM_TorchAddReference, at::kFloat)->Apply(args);
BENCHMARK_TEMPLATE(BM_TenaxSumKernel, at::kHalf)->Apply(args);
BENCHMARK_TEMPLATE(BM_TorchAddReference, at::kHalf)->Apply(args);
BENCHMARK_TEMPLATE(BM_TenaxSumKernel, at::kBFloat16)->Apply(args);
BENCHMARK_TEMPLATE(BM_TorchAddReference, at::kBFloat16)->Apply(args);

}  // namespace

BENCHMARK_MAIN();
