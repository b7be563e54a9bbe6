// Pipeline bubble, measured against the theory: p equal stages (each `--layers` Linear(width,
// width) + tanh), m micro-batches, GPipe, 1F1B and interleaved 1F1B (the same layers of a
// rank as `--chunks` model chunks, virtual stage c·p + s). For each schedule it prints the
// median step time and the mean over stages of the fraction of the step each stage spent
// waiting to receive, next to (p-1)/(v·m+p-1) (v = 1 but for the interleaved schedule).
//
//   tenaxrun --nproc-per-node 2 build/bench/tenax-pipeline-bench --micro 8

#include <absl/flags/flag.h>
#include <absl/flags/parse.h>
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cstdio>

#include "tenax/parallel/pipeline.h"
#include "tenax/tenax.h"

ABSL_FLAG(int, micro, 8, "micro-batches per step");
ABSL_FLAG(int, steps, 10, "timed steps (after 2 warm-up steps)");
ABSL_FLAG(int, width, 512, "width of each Linear layer");
ABSL_FLAG(int, layers, 4, "Linear(width, width) + tanh layers per stage");
ABSL_FLAG(int, batch, 64, "rows per step");
ABSL_FLAG(int, chunks, 2, "model chunks per rank of the interleaved schedule (divides --layers)");

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  const int micro = absl::GetFlag(FLAGS_micro), steps = absl::GetFlag(FLAGS_steps);
  const int width = absl::GetFlag(FLAGS_width), layers = absl::GetFlag(FLAGS_layers);
  const int batch = absl::GetFlag(FLAGS_batch), chunks = absl::GetFlag(FLAGS_chunks);
  torch::set_num_threads(1);
  auto world = tenax::init();
  torch::manual_seed(0);
  torch::nn::Sequential stage;
  for (int l = 0; l < layers; ++l) {
    stage->push_back(torch::nn::Linear(width, width));
    stage->push_back(torch::nn::Functional(torch::tanh));
  }
  auto x = torch::randn({batch, width}), y = torch::randn({batch, width});
  // Chunk c runs layers [c·L/v, (c+1)·L/v) of the rank's L (as Sequential indices: 2 each).
  const int per_chunk = layers / chunks;
  auto run_chunk = [&](int c, int v, const torch::Tensor& in) {
    const int per = layers / v;
    torch::Tensor h = in;
    for (int l = c * per; l < (c + 1) * per; ++l) {
      h = torch::tanh(stage[2 * l]->as<torch::nn::Linear>()->forward(h));
    }
    return h;
  };
  using Kind = tenax::PipelineScheduleKind;
  for (auto kind : {Kind::kGPipe, Kind::k1F1B, Kind::kInterleaved1F1B}) {
    const int v = kind == Kind::kInterleaved1F1B ? chunks : 1;
    if (v > 1 && (per_chunk * chunks != layers || micro % world.size != 0)) continue;
    tenax::PipelineSchedule schedule(world.comm, kind, micro, v);
    std::vector<double> times, bubbles;
    for (int s = 0; s < steps + 2; ++s) {
      world.comm->barrier();
      auto t0 = std::chrono::steady_clock::now();
      stage->zero_grad();
      schedule.run(
          [&](int c, const torch::Tensor& in) { return run_chunk(c, v, in); }, x, y,
          [](const torch::Tensor& o, const torch::Tensor& t) { return torch::mse_loss(o, t); });
      double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
      auto b = at::tensor({schedule.measured_bubble()}, at::kDouble);
      world.comm->all_reduce(b, tenax::ReduceOp::kAvg);
      if (s >= 2) {
        times.push_back(ms);
        bubbles.push_back(b.item<double>());
      }
    }
    std::sort(times.begin(), times.end());
    std::sort(bubbles.begin(), bubbles.end());
    if (world.rank == 0) {
      const char* name = kind == Kind::kGPipe ? "gpipe" : v > 1 ? "interleaved" : "1f1b";
      std::printf(
          "%s p=%d m=%d v=%d median_step_ms=%.1f measured_bubble=%.3f theoretical_bubble=%.3f\n",
          name, world.size, micro, v, times[times.size() / 2], bubbles[bubbles.size() / 2],
          schedule.theoretical_bubble());
    }
  }
  world.comm->barrier();
  return 0;
}
