#include "tenax/parallel/loss_scaler.h"

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include <cmath>
#include <cstdio>

#include "tenax/core/error.h"

namespace tenax {

LossScaler::LossScaler(LossScalerOptions options) : o_(options), scale_(options.init_scale) {
  auto bad = [](const std::string& what, double v, const std::string& need) {
    return ConfigError("LossScaler: " + what + " " + std::to_string(v) + " must be " + need);
  };
  if (!(o_.init_scale > 0) || !std::isfinite(o_.init_scale)) {
    throw bad("init_scale", o_.init_scale, "positive and finite");
  }
  if (!(o_.growth_factor > 1)) throw bad("growth_factor", o_.growth_factor, "above 1");
  if (!(o_.backoff_factor > 0 && o_.backoff_factor < 1)) {
    throw bad("backoff_factor", o_.backoff_factor, "between 0 and 1");
  }
  if (o_.growth_interval < 1) {
    throw bad("growth_interval", static_cast<double>(o_.growth_interval), "at least 1");
  }
  if (!(o_.min_scale > 0) || o_.min_scale > o_.init_scale) {
    throw bad("min_scale", o_.min_scale, "positive and at most init_scale");
  }
}

at::Tensor LossScaler::scale(const at::Tensor& loss) const { return loss * scale_; }

bool LossScaler::unscale(const std::vector<at::Tensor>& params,
                         const std::vector<Communicator*>& groups) {
  at::NoGradGuard no_grad;
  const double inverse = 1.0 / scale_;
  at::Tensor nonfinite;  // bool: some gradient element is inf or NaN
  for (const at::Tensor& p : params) {
    at::Tensor g = p.grad();
    if (!g.defined()) continue;
    g.mul_(inverse);
    at::Tensor here = at::isfinite(g).logical_not_().any();
    nonfinite = nonfinite.defined() ? nonfinite.logical_or_(here) : here;
  }
  at::Tensor flag =
      nonfinite.defined() ? nonfinite.to(at::kFloat).reshape({1}) : at::zeros({1}, at::kFloat);
  for (Communicator* group : groups) {
    if (group != nullptr && group->size() > 1) group->all_reduce(flag, ReduceOp::kMax);
  }
  return flag.item<float>() == 0;
}

void LossScaler::update(bool finite) {
  if (!finite) {
    ++overflows_;
    finite_run_ = 0;
    if (o_.dynamic) scale_ = std::max(o_.min_scale, scale_ * o_.backoff_factor);
    return;
  }
  if (++finite_run_ >= o_.growth_interval) {
    finite_run_ = 0;
    const double grown = scale_ * o_.growth_factor;
    if (o_.dynamic && std::isfinite(grown)) scale_ = grown;
  }
}

std::string LossScaler::state() const {
  char buf[96];
  std::snprintf(buf, sizeof buf, "%a %lld %lld", scale_, static_cast<long long>(finite_run_),
                static_cast<long long>(overflows_));
  return buf;
}

void LossScaler::restore(const std::string& state) {
  double scale = 0;
  long long run = -1, overflows = -1;
  if (std::sscanf(state.c_str(), "%la %lld %lld", &scale, &run, &overflows) != 3 || !(scale > 0) ||
      !std::isfinite(scale) || run < 0 || overflows < 0) {
    throw ConfigError("LossScaler: '" + state + "' is not a loss scaler's saved state");
  }
  scale_ = scale;
  finite_run_ = run;
  overflows_ = overflows;
}

}  // namespace tenax
