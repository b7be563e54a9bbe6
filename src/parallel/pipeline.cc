#include "tenax/parallel/pipeline.h"

#include <ATen/ATen.h>
#include <torch/csrc/autograd/autograd.h>

#include <chrono>
#include <deque>

#include "tenax/core/error.h"

namespace tenax {
namespace {

using Clock = std::chrono::steady_clock;

// Point-to-point channels between neighbouring stages. A tensor travels as a fixed 9-element
// header (dtype, ndim, up to 7 sizes) then its data, each with its own tag, so the receiver
// needs no shape in advance. Sends are posted and waited for at the end of the run, which keeps
// two stages that both send first from waiting on each other.
constexpr uint32_t kActivationTag = 1, kGradientTag = 2, kHeaderOffset = 100;
constexpr int kMaxDims = 7;

class Channels {
 public:
  explicit Channels(Communicator& pp) : pp_(pp) {}

  void send(const at::Tensor& t, int peer, uint32_t tag) {
    if (t.dim() > kMaxDims) throw ConfigError("pipeline: activations have at most 7 dims");
    at::Tensor header = at::zeros({2 + kMaxDims}, at::kLong);
    header[0] = static_cast<int64_t>(t.scalar_type());
    header[1] = t.dim();
    for (int64_t d = 0; d < t.dim(); ++d) header[2 + d] = t.size(d);
    at::Tensor data = t.detach().contiguous();
    pending_.push_back(pp_.send_async(header, peer, tag + kHeaderOffset));
    pending_.push_back(pp_.send_async(data, peer, tag));
    keep_.push_back(header);
    keep_.push_back(data);
  }

  at::Tensor recv(int peer, uint32_t tag, double* waited) {
    auto t0 = Clock::now();
    at::Tensor header = at::empty({2 + kMaxDims}, at::kLong);
    pp_.recv(header, peer, tag + kHeaderOffset);
    std::vector<int64_t> shape;
    for (int64_t d = 0; d < header[1].item<int64_t>(); ++d) shape.push_back(header[2 + d].item<int64_t>());
    at::Tensor data = at::empty(shape, at::TensorOptions().dtype(
                                           static_cast<at::ScalarType>(header[0].item<int64_t>())));
    pp_.recv(data, peer, tag);
    *waited += std::chrono::duration<double>(Clock::now() - t0).count();
    return data;
  }

  void finish() {
    for (auto& w : pending_) w->wait();
    pending_.clear();
    keep_.clear();
  }

 private:
  Communicator& pp_;
  std::vector<WorkHandle> pending_;
  std::vector<at::Tensor> keep_;
};

}  // namespace

PipelineSchedule::PipelineSchedule(std::shared_ptr<Communicator> pp, PipelineScheduleKind kind,
                                   int micro_batches)
    : pp_(std::move(pp)), kind_(kind), micro_batches_(micro_batches) {
  if (micro_batches < 1) {
    throw ConfigError("pipeline: micro_batches must be >= 1 (got " + std::to_string(micro_batches) +
                      ")");
  }
}

double PipelineSchedule::theoretical_bubble() const {
  const double p = pp_->size(), m = micro_batches_;
  return (p - 1) / (m + p - 1);
}

double PipelineSchedule::run(const StageFn& stage, const at::Tensor& inputs,
                             const at::Tensor& targets, const LossFn& loss_fn) {
  const int p = pp_->size(), s = pp_->rank(), m = micro_batches_;
  const bool first = s == 0, last = s == p - 1;
  // Only the ends see the batch: share its row counts so every stage rejects a bad one alike.
  at::Tensor rows = at::zeros({2}, at::kLong);
  if (first) rows[0] = inputs.size(0);
  if (last) rows[1] = targets.size(0);
  pp_->all_reduce(rows, ReduceOp::kMax);
  for (int k = 0; k < 2; ++k) {
    const int64_t n = rows[k].item<int64_t>();
    if (n % m != 0 || n == 0) {
      throw ConfigError("pipeline (stage " + std::to_string(s) + "): the " +
                        (k == 0 ? "input" : "target") + " batch of " + std::to_string(n) +
                        " rows does not divide into " + std::to_string(m) + " micro-batches");
    }
  }
  std::vector<at::Tensor> in_chunks, target_chunks;
  if (first) in_chunks = inputs.chunk(m, 0);
  if (last) target_chunks = targets.chunk(m, 0);

  Channels ch(*pp_);
  double waited = 0, total_loss = 0;
  auto t_start = Clock::now();
  // Per micro-batch: the stage's input (a leaf that collects its gradient, except on the first
  // stage) and its output (or, on the last stage, the micro-batch loss).
  std::deque<std::pair<at::Tensor, at::Tensor>> live;

  auto forward = [&](int i) {
    at::Tensor x = first ? in_chunks[i] : ch.recv(s - 1, kActivationTag, &waited).requires_grad_(true);
    at::Tensor y = stage(x);
    if (last) {
      y = loss_fn(y, target_chunks[i]) / m;
      total_loss += y.item<double>();
    } else {
      ch.send(y, s + 1, kActivationTag);
    }
    live.emplace_back(x, y);
  };
  auto backward = [&]() {
    auto [x, y] = live.front();
    live.pop_front();
    if (last) {
      y.backward();
    } else {
      at::Tensor g = ch.recv(s + 1, kGradientTag, &waited);
      torch::autograd::backward({y}, {g});
    }
    if (!first) ch.send(x.grad(), s - 1, kGradientTag);
  };

  if (kind_ == PipelineScheduleKind::kGPipe) {
    for (int i = 0; i < m; ++i) forward(i);
    for (int i = 0; i < m; ++i) backward();
  } else {
    const int warmup = std::min(p - s - 1, m);
    int next = 0;
    for (; next < warmup; ++next) forward(next);
    for (; next < m; ++next) {
      forward(next);
      backward();
    }
    while (!live.empty()) backward();
  }
  ch.finish();
  const double elapsed = std::chrono::duration<double>(Clock::now() - t_start).count();
  measured_bubble_ = elapsed > 0 ? waited / elapsed : 0;
  at::Tensor loss = at::tensor({total_loss}, at::kDouble);
  pp_->broadcast(loss, p - 1);
  return loss.item<double>();
}

}  // namespace tenax
