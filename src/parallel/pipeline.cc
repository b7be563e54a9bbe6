#include "tenax/parallel/pipeline.h"

#include <ATen/ATen.h>
#include <torch/csrc/autograd/autograd.h>

#include <chrono>
#include <map>
#include <utility>

#include "tenax/core/error.h"

namespace tenax {
namespace {

using Clock = std::chrono::steady_clock;

// Point-to-point channels between neighbouring stages. A tensor travels as a fixed 9-element
// header (dtype, ndim, up to 7 sizes) then its data, each with its own tag, so the receiver
// needs no shape in advance. Sends are posted and waited for at the end of the run, which keeps
// two stages that both send first from waiting on each other. Messages into chunk c carry tag
// 1 + 2c (activations) or 2 + 2c (gradients); between two ranks those of one tag travel in
// micro-batch order on both sides.
constexpr uint32_t kHeaderOffset = 1u << 16;
uint32_t activation_tag(int chunk) { return 1 + 2 * static_cast<uint32_t>(chunk); }
uint32_t gradient_tag(int chunk) { return 2 + 2 * static_cast<uint32_t>(chunk); }
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
                                   int micro_batches, int chunks)
    : pp_(std::move(pp)), kind_(kind), micro_batches_(micro_batches), chunks_(chunks) {
  const std::string where = "pipeline (stage " + std::to_string(pp_->rank()) + " of " +
                            std::to_string(pp_->size()) + "): ";
  if (micro_batches < 1) {
    throw ConfigError(where + "micro_batches must be >= 1 (got " + std::to_string(micro_batches) +
                      ")");
  }
  if (chunks < 1)
    throw ConfigError(where + "chunks must be >= 1 (got " + std::to_string(chunks) + ")");
  if (chunks > 1 && kind != PipelineScheduleKind::kInterleaved1F1B) {
    throw ConfigError(where + std::to_string(chunks) +
                      " model chunks per rank need the interleaved 1F1B schedule");
  }
  if (kind == PipelineScheduleKind::kInterleaved1F1B && chunks > 1) {
    if (pp_->size() < 2) throw ConfigError(where + "interleaving needs at least 2 stages");
    if (micro_batches % pp_->size() != 0) {
      throw ConfigError(where + "interleaved 1F1B needs the micro-batches (" +
                        std::to_string(micro_batches) + ") divisible by the pipeline size (" +
                        std::to_string(pp_->size()) + ")");
    }
  }
}

double PipelineSchedule::theoretical_bubble() const {
  const double p = pp_->size(), m = micro_batches_, v = chunks_;
  return (p - 1) / (v * m + p - 1);
}

std::vector<PipelinePass> pipeline_order(PipelineScheduleKind kind, int p, int s, int m, int v) {
  std::vector<PipelinePass> passes;
  if (kind == PipelineScheduleKind::kGPipe) {
    for (int i = 0; i < m; ++i) passes.push_back({true, 0, i});
    for (int i = 0; i < m; ++i) passes.push_back({false, 0, i});
    return passes;
  }
  // Pass k's chunk and micro-batch: micro-batches go through the chunks in groups of p (for
  // v = 1: chunk 0, micro-batch k). Backward visits the chunks in reverse.
  const int group = p * v;
  auto pass = [&](bool forward, int k) {
    if (v == 1) return PipelinePass{forward, 0, k};
    const int c = (k % group) / p;
    return PipelinePass{forward, forward ? c : v - 1 - c, (k / group) * p + k % p};
  };
  const int total = m * v;
  // Forwards before the first backward: the stages after this one fill (1F1B), and with chunks
  // each of this rank's later chunks needs a whole group first (Megatron-LM's count).
  const int warmup = std::min(total, v == 1 ? p - s - 1 : (p - s - 1) * 2 + (v - 1) * p);
  for (int k = 0; k < warmup; ++k) passes.push_back(pass(true, k));
  for (int k = warmup; k < total; ++k) {
    passes.push_back(pass(true, k));
    passes.push_back(pass(false, k - warmup));
  }
  for (int k = total - warmup; k < total; ++k) passes.push_back(pass(false, k));
  return passes;
}

std::vector<PipelinePass> PipelineSchedule::order() const {
  return pipeline_order(kind_, pp_->size(), pp_->rank(), micro_batches_, chunks_);
}

double PipelineSchedule::run(const StageFn& stage, const at::Tensor& inputs,
                             const at::Tensor& targets, const LossFn& loss_fn) {
  if (chunks_ != 1) {
    throw ConfigError("pipeline: " + std::to_string(chunks_) +
                      " chunks per rank: run() needs the stage function that takes a chunk");
  }
  return run([&](int, const at::Tensor& x) { return stage(x); }, inputs, targets, loss_fn);
}

double PipelineSchedule::run(const ChunkFn& stage, const at::Tensor& inputs,
                             const at::Tensor& targets, const LossFn& loss_fn) {
  const int p = pp_->size(), s = pp_->rank(), m = micro_batches_, v = chunks_;
  const int last_stage = v * p - 1;  // virtual stages: chunk c of rank s is c·p + s
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
  // Per (chunk, micro-batch) between its forward and backward: the chunk's input (a leaf that
  // collects its gradient, except on virtual stage 0) and its output (or, on the last virtual
  // stage, the micro-batch loss).
  std::map<std::pair<int, int>, std::pair<at::Tensor, at::Tensor>> live;

  auto forward = [&](int c, int i) {
    const int vs = c * p + s;
    at::Tensor x = vs == 0 ? in_chunks[i]
                           : ch.recv((vs - 1) % p, activation_tag(c), &waited).requires_grad_(true);
    at::Tensor y = stage(c, x);
    if (vs == last_stage) {
      y = loss_fn(y, target_chunks[i]) / m;
      total_loss += y.item<double>();
    } else {
      ch.send(y, (vs + 1) % p, activation_tag((vs + 1) / p));
    }
    live.emplace(std::make_pair(c, i), std::make_pair(x, y));
  };
  auto backward = [&](int c, int i) {
    const int vs = c * p + s;
    auto it = live.find({c, i});
    auto [x, y] = it->second;
    live.erase(it);
    if (vs == last_stage) {
      y.backward();
    } else {
      at::Tensor g = ch.recv((vs + 1) % p, gradient_tag(c), &waited);
      torch::autograd::backward({y}, {g});
    }
    if (vs > 0) ch.send(x.grad(), (vs - 1) % p, gradient_tag((vs - 1) / p));
  };

  for (const PipelinePass& pass : order()) {
    if (pass.forward) {
      forward(pass.chunk, pass.micro_batch);
    } else {
      backward(pass.chunk, pass.micro_batch);
    }
  }
  ch.finish();
  const double elapsed = std::chrono::duration<double>(Clock::now() - t_start).count();
  measured_bubble_ = elapsed > 0 ? waited / elapsed : 0;
  at::Tensor loss = at::tensor({total_loss}, at::kDouble);
  pp_->broadcast(loss, p - 1);
  return loss.item<double>();
}

}  // namespace tenax
