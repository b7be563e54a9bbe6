#include "tenax/checkpoint/state.h"

#include "tenax/core/error.h"

namespace tenax {

void StateDict::add(const std::string& name, const at::Tensor& tensor) {
  add_shard(name, tensor, tensor.sizes().vec(), std::vector<int64_t>(tensor.dim(), 0));
}

void StateDict::add_shard(const std::string& name, const at::Tensor& tensor,
                          std::vector<int64_t> global_shape, std::vector<int64_t> offsets) {
  for (const auto& t : tensors_) {
    if (t.name == name) throw ConfigError("state dict: tensor '" + name + "' added twice");
  }
  if (!tensor.defined()) throw ConfigError("state dict: tensor '" + name + "' is undefined");
  const int64_t d = tensor.dim();
  if (int64_t(global_shape.size()) != d || int64_t(offsets.size()) != d) {
    throw ConfigError("state dict: tensor '" + name + "' has " + std::to_string(d) +
                      " dimensions but its global shape / offsets have " +
                      std::to_string(global_shape.size()) + " / " +
                      std::to_string(offsets.size()));
  }
  for (int64_t i = 0; i < d; ++i) {
    if (offsets[i] < 0 || offsets[i] + tensor.size(i) > global_shape[i]) {
      throw ConfigError("state dict: tensor '" + name + "': dimension " + std::to_string(i) +
                        " part [" + std::to_string(offsets[i]) + ", " +
                        std::to_string(offsets[i] + tensor.size(i)) +
                        ") does not fit in the global size " + std::to_string(global_shape[i]));
    }
  }
  tensors_.push_back({name, tensor, std::move(global_shape), std::move(offsets)});
}

int64_t StateDict::get_int(const std::string& name) const {
  auto it = ints_.find(name);
  if (it == ints_.end()) throw ConfigError("state dict: no integer '" + name + "'");
  return it->second;
}

const std::string& StateDict::get_blob(const std::string& name) const {
  auto it = blobs_.find(name);
  if (it == blobs_.end()) throw ConfigError("state dict: no blob '" + name + "'");
  return it->second;
}

const TensorShard& StateDict::tensor(const std::string& name) const {
  for (const auto& t : tensors_) {
    if (t.name == name) return t;
  }
  throw ConfigError("state dict: no tensor '" + name + "'");
}

int64_t StateDict::tensor_bytes() const {
  int64_t n = 0;
  for (const auto& t : tensors_) n += t.tensor.numel() * t.tensor.element_size();
  return n;
}

}  // namespace tenax
