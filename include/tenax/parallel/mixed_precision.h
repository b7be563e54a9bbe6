#pragma once

// Mixed precision: forward passes compute in a lower precision (bf16) while the parameters,
// their gradients and the optimizer state stay fp32, the master copy every update is applied
// to. LibTorch's autocast casts the inputs of matrix products (linear, matmul, bmm, ...) to the
// compute dtype on the fly; backward follows the dtypes forward used, and each parameter's
// gradient arrives in fp32 (the cast's backward). Keep numerically sensitive reductions
// (norms, softmax, the loss) in fp32 yourself, as the Llama example does.
//
//   {
//     tenax::Autocast bf16(at::kCPU, at::kBFloat16);
//     loss = model->loss(model->forward(x), y);
//   }
//   loss.backward();
//
// Gradients are reduced across data-parallel ranks in fp32 by default; DataParallelOptions::
// reduce_in(at::kBFloat16) halves the bytes on the wire at the cost of bf16 rounding of the sum.

#include <c10/core/DeviceType.h>
#include <c10/core/ScalarType.h>

#include <string>

#include "tenax/core/export.h"

namespace tenax {

// While alive, autocast is on for `device` (kCPU or kCUDA) with `dtype` on this thread; kFloat
// turns it off. Restores the previous state when destroyed; nests. Throws ConfigError for a
// dtype autocast cannot use on that device (CPU: bf16 only).
// Thread rules: autocast is per thread (LibTorch's thread-local state): an Autocast affects the
// thread that built it only, and must be destroyed on that thread, innermost first.
class TENAX_API Autocast {
 public:
  Autocast(c10::DeviceType device, c10::ScalarType dtype);
  ~Autocast();
  Autocast(const Autocast&) = delete;
  Autocast& operator=(const Autocast&) = delete;

 private:
  c10::DeviceType device_;
  bool was_enabled_;
  c10::ScalarType was_dtype_;
};

// "fp32" -> kFloat, "bf16" -> kBFloat16, "fp16" -> kHalf; ConfigError naming `flag` otherwise.
TENAX_API c10::ScalarType parse_dtype(const std::string& text, const std::string& flag);

// "fp32", "bf16", "fp16" or the dtype's own name.
TENAX_API std::string dtype_name(c10::ScalarType dtype);

}  // namespace tenax
