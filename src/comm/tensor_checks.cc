#include "comm/tensor_checks.h"

#include <sstream>

#include "comm/reduce_kernels.h"
#include "tenax/core/error.h"

namespace tenax {

std::string describe(const at::Tensor& t) {
  if (!t.defined()) return "undefined tensor";
  std::ostringstream os;
  os << c10::toString(t.scalar_type()) << t.sizes() << " on " << t.device();
  return os.str();
}

void check_tensor(const OpContext& ctx, const at::Tensor& t, const char* name, bool want_cuda) {
  if (!t.defined()) throw ConfigError(ctx.where() + ": tensor '" + name + "' is undefined");
  if (!is_supported_dtype(t.scalar_type())) {
    throw ConfigError(ctx.where() + ": tensor '" + name + "' (" + describe(t) +
                      ") has an unsupported dtype; use float32, float64, float16, bfloat16, "
                      "int32, int64 or uint8");
  }
  if (t.is_cuda() != want_cuda) {
    throw ConfigError(ctx.where() + ": tensor '" + name + "' is " + describe(t) + " but the " +
                      (want_cuda ? "nccl backend needs CUDA tensors"
                                 : "gloo backend needs CPU tensors"));
  }
  if (t.is_sparse()) {
    throw ConfigError(ctx.where() + ": tensor '" + name + "' is sparse; pass a dense tensor");
  }
}

void check_same_dtype(const OpContext& ctx, const at::Tensor& a, const char* an,
                      const at::Tensor& b, const char* bn) {
  if (a.scalar_type() != b.scalar_type()) {
    throw ConfigError(ctx.where() + ": tensor '" + an + "' is " + describe(a) + " but '" + bn +
                      "' is " + describe(b) + "; their dtypes must match");
  }
}

void check_rank(const OpContext& ctx, int peer, const char* what) {
  if (peer < 0 || peer >= ctx.size) {
    throw ConfigError(ctx.where() + ": " + what + " " + std::to_string(peer) +
                      " is out of range [0, " + std::to_string(ctx.size) + ")");
  }
}

}  // namespace tenax
