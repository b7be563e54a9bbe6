// Pipeline bubble, measured against the theory: p equal stages (each `--layers` Linear(width,
// width) + tanh), m micro-batches, GPipe and 1F1B. For each schedule it prints the median step
// time and the mean over stages of the fraction of the step each stage spent waiting to
// receive, next to (p-1)/(m+p-1).
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

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  const int micro = absl::GetFlag(FLAGS_micro), steps = absl::GetFlag(FLAGS_steps);
  const int width = absl::GetFlag(FLAGS_width), layers = absl::GetFlag(FLAGS_layers);
  const int batch = absl::GetFlag(FLAGS_batch);
  torch::set_num_threads(1);
  auto world = tenax::init();
  torch::manual_seed(0);
  torch::nn::Sequential stage;
  for (int l = 0; l < layers; ++l) {
    stage->push_back(torch::nn::Linear(width, width));
    stage->push_back(torch::nn::Functional(torch::tanh));
  }
  auto x = torch::randn({batch, width}), y = torch::randn({batch, width});
  for (auto kind : {tenax::PipelineScheduleKind::kGPipe, tenax::PipelineScheduleKind::k1F1B}) {
    tenax::PipelineSchedule schedule(world.comm, kind, micro);
    std::vector<double> times, bubbles;
    for (int s = 0; s < steps + 2; ++s) {
      world.comm->barrier();
      auto t0 = std::chrono::steady_clock::now();
      stage->zero_grad();
      schedule.run([&](const torch::Tensor& in) { return stage->forward(in); }, x, y,
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
      std::printf("%s p=%d m=%d median_step_ms=%.1f measured_bubble=%.3f theoretical_bubble=%.3f\n",
                  kind == tenax::PipelineScheduleKind::kGPipe ? "gpipe" : "1f1b", world.size, micro,
                  times[times.size() / 2], bubbles[bubbles.size() / 2], schedule.theoretical_bubble());
    }
  }
  world.comm->barrier();
  return 0;
}
