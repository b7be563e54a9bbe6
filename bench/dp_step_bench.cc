// Data-parallel training step time: tenax::DataParallel on an MLP, with bucketed overlap
// (default buckets) or with one bucket (all-reduce after backward). The same model, batch and
// optimizer as bench/dp_step_reference.py, which runs torch.distributed's DDP.
//
//   tenaxrun --nproc-per-node 2 build/bench/tenax-dp-step [--mode overlap|after|zero]
//       [--optim sgd|adamw] [--steps 30]
// --mode zero trains with ZeroAdamW (sharded optimizer state) and reports the per-rank optimizer
// state bytes; compare it with --mode overlap --optim adamw.

#include <absl/flags/flag.h>
#include <absl/flags/parse.h>
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "tenax/parallel/data_parallel.h"
#include "tenax/parallel/zero.h"
#include "tenax/tenax.h"

ABSL_FLAG(std::string, mode, "overlap", "overlap | after (one bucket) | zero (ZeroAdamW)");
ABSL_FLAG(std::string, optim, "sgd", "sgd | adamw (zero implies adamw)");
ABSL_FLAG(int, steps, 30, "timed steps (after 5 warm-up steps)");
ABSL_FLAG(int, width, 1024, "width of each Linear layer");
ABSL_FLAG(int, layers, 4, "number of Linear(width, width) + ReLU layers");
ABSL_FLAG(int, batch, 64, "rows per rank");

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  std::string mode = absl::GetFlag(FLAGS_mode), optim = absl::GetFlag(FLAGS_optim);
  const int steps = absl::GetFlag(FLAGS_steps), warmup = 5, width = absl::GetFlag(FLAGS_width);
  const int layers = absl::GetFlag(FLAGS_layers), batch = absl::GetFlag(FLAGS_batch);
  if (mode != "overlap" && mode != "after" && mode != "zero") {
    std::fprintf(stderr, "--mode must be overlap, after or zero\n");
    return 2;
  }
  if (optim != "sgd" && optim != "adamw") {
    std::fprintf(stderr, "--optim must be sgd or adamw\n");
    return 2;
  }
  if (mode == "zero") optim = "adamw";
  torch::set_num_threads(1);
  auto world = tenax::init();
  torch::manual_seed(0);
  auto model = std::make_shared<torch::nn::SequentialImpl>();
  for (int l = 0; l < layers; ++l) {
    model->push_back(torch::nn::Linear(width, width));
    model->push_back(torch::nn::ReLU());
  }
  model->push_back(torch::nn::Linear(width, 10));
  tenax::DataParallelOptions opts;
  if (mode == "after") opts.bucket_cap(int64_t(1) << 40).first_bucket_cap(int64_t(1) << 40);
  std::unique_ptr<tenax::DataParallel> ddp;
  std::unique_ptr<torch::optim::Optimizer> opt;
  std::unique_ptr<tenax::ZeroAdamW> zero;
  const auto adamw = torch::optim::AdamWOptions(1e-3);
  if (mode == "zero") {
    zero = std::make_unique<tenax::ZeroAdamW>(model->parameters(), world.comm, adamw);
  } else {
    ddp = std::make_unique<tenax::DataParallel>(model, world.comm, opts);
    if (optim == "sgd") {
      opt = std::make_unique<torch::optim::SGD>(model->parameters(), torch::optim::SGDOptions(0.01));
    } else {
      opt = std::make_unique<torch::optim::AdamW>(model->parameters(), adamw);
    }
  }
  torch::manual_seed(1 + world.rank);
  auto x = torch::randn({batch, width});
  auto y = torch::randint(0, 10, {batch});
  std::vector<double> times;
  for (int s = 0; s < warmup + steps; ++s) {
    world.comm->barrier();
    auto t0 = std::chrono::steady_clock::now();
    if (zero) zero->zero_grad(); else opt->zero_grad();
    auto loss = torch::nn::functional::cross_entropy(model->forward(x), y);
    loss.backward();
    if (zero) zero->step(); else opt->step();
    double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0)
                    .count();
    if (s >= warmup) times.push_back(ms);
  }
  std::sort(times.begin(), times.end());
  if (world.rank == 0) {
    int64_t state = zero ? zero->state_bytes()
                         : optim == "adamw"
                               ? tenax::adamw_state_bytes(static_cast<torch::optim::AdamW&>(*opt))
                               : 0;
    std::printf("tenax dp=%d mode=%s optim=%s buckets=%zu optimizer_state_bytes=%lld "
                "median_step_ms=%.2f\n",
                world.size, mode.c_str(), optim.c_str(), ddp ? ddp->num_buckets() : size_t(0),
                static_cast<long long>(state), times[times.size() / 2]);
  }
  world.comm->barrier();
  return 0;
}
