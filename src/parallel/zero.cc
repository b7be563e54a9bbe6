#include "tenax/parallel/zero.h"

#include <ATen/core/grad_mode.h>

#include "tenax/core/error.h"

namespace tenax {

int64_t adamw_state_bytes(const torch::optim::AdamW& optimizer) {
  int64_t bytes = 0;
  for (const auto& kv : optimizer.state()) {
    const auto& st = static_cast<const torch::optim::AdamWParamState&>(*kv.second);
    for (const auto* t : {&st.exp_avg(), &st.exp_avg_sq(), &st.max_exp_avg_sq()}) {
      if (t->defined()) bytes += static_cast<int64_t>(t->nbytes());
    }
  }
  return bytes;
}

ZeroAdamW::ZeroAdamW(std::vector<torch::Tensor> params, std::shared_ptr<Communicator> dp,
                     torch::optim::AdamWOptions options)
    : params_(std::move(params)), dp_(std::move(dp)) {
  if (params_.empty()) throw ConfigError("ZeroAdamW needs at least one parameter");
  const auto dtype = params_[0].scalar_type();
  for (size_t i = 0; i < params_.size(); ++i) {
    if (params_[i].scalar_type() != dtype) {
      throw ConfigError("ZeroAdamW (dp rank " + std::to_string(dp_->rank()) + "): parameter " +
                        std::to_string(i) + " is " + c10::toString(params_[i].scalar_type()) +
                        " but parameter 0 is " + c10::toString(dtype) +
                        "; all parameters must share one dtype");
    }
    total_numel_ += params_[i].numel();
  }
  const int n = dp_->size();
  shard_numel_ = (total_numel_ + n - 1) / n;
  at::NoGradGuard no_grad;
  for (auto& p : params_) dp_->broadcast(p, 0);
  // Padding elements have zero parameters and zero gradients, so AdamW leaves them at zero.
  flat_params_ = at::zeros({shard_numel_ * n}, params_[0].options());
  flat_grads_ = at::zeros({shard_numel_ * n}, params_[0].options());
  int64_t off = 0;
  for (auto& p : params_) {
    flat_params_.narrow(0, off, p.numel()).copy_(p.reshape({-1}));
    off += p.numel();
  }
  shard_ = flat_params_.narrow(0, dp_->rank() * shard_numel_, shard_numel_).clone();
  grad_shard_ = at::zeros_like(shard_);
  shard_.mutable_grad() = grad_shard_;
  adamw_ = std::make_unique<torch::optim::AdamW>(std::vector<torch::Tensor>{shard_}, options);
}

void ZeroAdamW::reduce_gradients() {
  at::NoGradGuard no_grad;
  int64_t off = 0;
  for (auto& p : params_) {
    auto dst = flat_grads_.narrow(0, off, p.numel());
    if (p.grad().defined()) {
      dst.copy_(p.grad().reshape({-1}));
    } else {
      dst.zero_();
    }
    off += p.numel();
  }
  // Each rank sends (n-1)/n of the gradients and receives its shard's average.
  dp_->reduce_scatter(grad_shard_, flat_grads_, ReduceOp::kAvg);
  reduced_ = true;
}

void ZeroAdamW::step() {
  if (!reduced_) reduce_gradients();
  reduced_ = false;
  at::NoGradGuard no_grad;
  adamw_->step();
  // The updated shards travel back to everyone: (n-1)/n of the parameters per rank.
  at::Tensor mine = flat_params_.narrow(0, dp_->rank() * shard_numel_, shard_numel_);
  mine.copy_(shard_);
  dp_->all_gather(flat_params_, mine);
  int64_t off = 0;
  for (auto& p : params_) {
    p.copy_(flat_params_.narrow(0, off, p.numel()).view_as(p));
    off += p.numel();
  }
}

void ZeroAdamW::zero_grad() {
  reduced_ = false;
  grad_shard_.zero_();
  for (auto& p : params_) {
    if (p.grad().defined()) {
      p.mutable_grad().detach_();
      p.mutable_grad().zero_();
    }
  }
}

void ZeroAdamW::reload_parameters() {
  at::NoGradGuard no_grad;
  int64_t off = 0;
  for (auto& p : params_) {
    flat_params_.narrow(0, off, p.numel()).copy_(p.reshape({-1}));
    off += p.numel();
  }
  shard_.copy_(flat_params_.narrow(0, dp_->rank() * shard_numel_, shard_numel_));
}

int64_t ZeroAdamW::state_bytes() const { return adamw_state_bytes(*adamw_); }

}  // namespace tenax
