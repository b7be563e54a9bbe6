#pragma once

// What a checkpoint holds: named tensors, each the whole tensor or one rank's part of a larger
// (global) one, plus integers (step, data cursor) and byte blobs (RNG states, user metadata).
// Where a part sits in its global tensor is what lets a checkpoint saved on one mesh be loaded
// on another (resharding).

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "tenax/core/export.h"

namespace tenax {

struct TENAX_API TensorShard {
  std::string name;
  at::Tensor tensor;                  // this rank's part; save copies it, restore fills it
  std::vector<int64_t> global_shape;  // the whole tensor's shape
  std::vector<int64_t> offsets;       // index of the part's first element in each dimension
};

// Thread rules: a plain container, not synchronized: any number of threads may read one that no
// thread changes; a change (add, set_int, a restore into it) excludes every other use. It holds
// references to its tensors, not copies.
class TENAX_API StateDict {
 public:
  // A whole tensor. Throws ConfigError when `name` is already used.
  void add(const std::string& name, const at::Tensor& tensor);
  // A part of the global tensor `name`: tensor.sizes() elements starting at `offsets`. Throws
  // ConfigError naming the tensor when the part does not fit in `global_shape` or the name is
  // already used.
  void add_shard(const std::string& name, const at::Tensor& tensor,
                 std::vector<int64_t> global_shape, std::vector<int64_t> offsets);
  void set_int(const std::string& name, int64_t value) { ints_[name] = value; }
  void set_blob(const std::string& name, std::string bytes) { blobs_[name] = std::move(bytes); }

  // Throw ConfigError naming the entry when it is missing.
  int64_t get_int(const std::string& name) const;
  const std::string& get_blob(const std::string& name) const;
  const TensorShard& tensor(const std::string& name) const;

  const std::vector<TensorShard>& tensors() const { return tensors_; }
  const std::map<std::string, int64_t>& ints() const { return ints_; }
  const std::map<std::string, std::string>& blobs() const { return blobs_; }
  std::map<std::string, int64_t>& mutable_ints() { return ints_; }
  std::map<std::string, std::string>& mutable_blobs() { return blobs_; }

  // Bytes of tensor data (sum of the parts' sizes).
  int64_t tensor_bytes() const;

 private:
  std::vector<TensorShard> tensors_;
  std::map<std::string, int64_t> ints_;
  std::map<std::string, std::string> blobs_;
};

}  // namespace tenax
