#pragma once

// Argument checks shared by the backends: each failure is a ConfigError naming the
// communicator, the rank, the operation and the tensor. Internal.

#include <ATen/core/Tensor.h>

#include <string>

namespace tenax {

struct OpContext {
  std::string comm;  // communicator name
  int rank;
  int size;
  std::string op;    // e.g. "all_reduce"
  std::string where() const {
    return op + " on communicator '" + comm + "' (rank " + std::to_string(rank) + " of " +
           std::to_string(size) + ")";
  }
};

// Checks that `t` is defined, has a supported dtype and lives on the backend's device type.
void check_tensor(const OpContext& ctx, const at::Tensor& t, const char* name, bool want_cuda);
// Checks that `a` and `b` have the same dtype.
void check_same_dtype(const OpContext& ctx, const at::Tensor& a, const char* an,
                      const at::Tensor& b, const char* bn);
// Checks that 0 <= peer < size.
void check_rank(const OpContext& ctx, int peer, const char* what);

// "float32[3, 5]" style description of a tensor, for messages.
std::string describe(const at::Tensor& t);

}  // namespace tenax
