#pragma once

// Dynamic loss scaling for fp16 training. fp16's smallest normal value is 6.1e-5: small
// gradients flush to zero unless the loss, and with it every gradient, is multiplied by a large
// scale before backward. The scaler keeps that scale as high as it can without overflowing:
//
//   loss = model->loss(...);
//   scaler.scale(loss).backward();                         // gradients × scale
//   if (scaler.unscale(params, {mesh.tp().get(), mesh.pp().get()})) {
//     optimizer.step();                                    // true gradients, all finite
//   }                                                      // else: the step is skipped
//   scaler.update(finite);
//
// An overflow anywhere (inf or NaN in any gradient on any rank of the groups) skips the step on
// every rank and multiplies the scale by backoff_factor; growth_interval finite steps in a row
// multiply it by growth_factor. Scales that are powers of two (the defaults) change no
// gradient's bits: scaling and unscaling are exact, so a step that does not overflow is the
// unscaled step exactly. The same conventions as PyTorch's GradScaler and Megatron's
// DynamicGradScaler.

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>
#include <vector>

#include "tenax/comm/communicator.h"
#include "tenax/core/export.h"

namespace tenax {

struct TENAX_API LossScalerOptions {
  double init_scale = 65536.0;     // 2^16
  double growth_factor = 2.0;      // > 1
  double backoff_factor = 0.5;     // in (0, 1)
  int64_t growth_interval = 1000;  // finite steps in a row before the scale grows
  double min_scale = 1.0;          // the scale never backs off below it
  bool dynamic = true;             // false: the scale stays init_scale (an overflow still skips)
};

// Thread rules: one thread at a time (the training thread). unscale() all-reduces its overflow
// flag over `groups`, so every rank of those groups calls it in the same step; scale() is
// const and may run on any thread.
class TENAX_API LossScaler {
 public:
  // Throws ConfigError naming the option that is out of range.
  explicit LossScaler(LossScalerOptions options = {});

  // loss × scale(), in the loss's dtype.
  at::Tensor scale(const at::Tensor& loss) const;

  // Divides every defined gradient of `params` by scale(), in place, and returns whether all of
  // them are finite on every rank of `groups`: one max all-reduce of a flag over each group
  // (pass those over which gradients differ: tp and pp, and dp before gradients are averaged).
  // Collective over `groups`; every rank gets the same answer.
  bool unscale(const std::vector<at::Tensor>& params, const std::vector<Communicator*>& groups);

  // Records a step's verdict (unscale's answer) and adjusts the scale.
  void update(bool finite);

  double scale_value() const { return scale_; }
  int64_t overflows() const { return overflows_; }  // steps that overflowed so far

  // The scale and the run of finite steps, exactly, as text for a checkpoint; restore() takes
  // it back (ConfigError if it is not such a text).
  std::string state() const;
  void restore(const std::string& state);

 private:
  LossScalerOptions o_;
  double scale_;
  int64_t finite_run_ = 0;
  int64_t overflows_ = 0;
};

}  // namespace tenax
