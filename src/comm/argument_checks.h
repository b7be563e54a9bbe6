#pragma once

// The arguments of every collective, checked the same way by every backend: each failure is a
// ConfigError naming the communicator, the rank, the operation and the tensor, worded once
// here. Internal.

#include <ATen/core/Tensor.h>

#include <array>
#include <cstdint>
#include <string>
#include <vector>

namespace tenax::detail {

struct OpContext {
  std::string comm;  // communicator name
  int rank;
  int size;
  std::string op;  // e.g. "all_reduce"
  bool cuda;       // the backend's device type: CUDA (nccl) or CPU (gloo)
  std::string where() const {
    return op + " on communicator '" + comm + "' (rank " + std::to_string(rank) + " of " +
           std::to_string(size) + ")";
  }
};

// Checks that `t` is defined, dense, has a supported dtype and lives on the backend's device.
void check_tensor(const OpContext& ctx, const at::Tensor& t, const char* name);
// Checks that 0 <= peer < size.
void check_rank(const OpContext& ctx, int peer, const char* what);

// Per operation: the tensors, their dtypes and element counts, the root or peer.
void check_all_reduce(const OpContext& ctx, const at::Tensor& input, const at::Tensor& output);
void check_reduce_scatter(const OpContext& ctx, const at::Tensor& output, const at::Tensor& input);
void check_all_gather(const OpContext& ctx, const at::Tensor& output, const at::Tensor& input);
void check_rooted(const OpContext& ctx, const at::Tensor& tensor, int root);
// Returns the element counts exchanged with each rank: the splits given, or equal shares.
struct AllToAllCounts {
  std::vector<int64_t> input, output;
};
AllToAllCounts check_all_to_all(const OpContext& ctx, const at::Tensor& output,
                                const at::Tensor& input, const std::vector<int64_t>& output_splits,
                                const std::vector<int64_t>& input_splits);
// A send (`to_peer`) or receive of `tensor` with rank `peer`, which may not be this rank.
void check_point_to_point(const OpContext& ctx, const at::Tensor& tensor, int peer, bool to_peer);

// What a rank passed to a collective, compared across ranks before it runs so that a call
// made differently on two ranks is an error naming both instead of a hang or garbage.
struct CallSignature {
  int op = 0;  // 0: nothing to compare (barrier)
  c10::ScalarType dtype = c10::ScalarType::Undefined;
  int64_t numel = 0;
  int root = -1;
  using Row = std::array<int64_t, 4>;  // as exchanged: op, dtype, count, root
  Row row() const { return {op, static_cast<int64_t>(dtype), numel, root}; }
};
// Throws ConfigError when a rank's row in `rows` (size × 4, by rank) differs from `mine`.
// `desc` names the operation ("all_reduce #12 (...)").
void check_same_call(const OpContext& ctx, const std::string& desc, const CallSignature::Row& mine,
                     const std::vector<int64_t>& rows);

// The text of a call made differently on two ranks: " does not match rank <other>, which passed
// <theirs>; this rank passed <mine>", each side as "<count> x <dtype> (<detail>)".
std::string call_text(int64_t count, int64_t dtype, const std::string& detail);
std::string mismatch_text(int other, const std::string& theirs, const std::string& mine);

// "Float[3, 5] on cpu" style description of a tensor, for messages.
std::string describe(const at::Tensor& t);

}  // namespace tenax::detail
