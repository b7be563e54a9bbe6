#include "tenax/parallel/fully_sharded.h"

#include <ATen/core/grad_mode.h>
#include <c10/core/StorageImpl.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/utils/lambda_post_hook.h>
#include <torch/csrc/autograd/variable.h>

#include <deque>
#include <map>
#include <mutex>

#include "tenax/core/error.h"

namespace tenax {
namespace {

// Memory of freed parameters kept for the next gather of the same size, up to a byte limit:
// the same few units' worth cycles through every layer instead of going back to the system
// and faulting in again (a CUDA tensor's allocator caches already; this is for host memory).
class BlockCache {
 public:
  void set_limit(size_t bytes) { limit_ = bytes; }
  // Takes a block of `bytes` bytes, cached or new from `allocator`.
  at::DataPtr take(at::Allocator* allocator, size_t bytes) {
    auto it = blocks_.find(bytes);
    if (it == blocks_.end()) return allocator->allocate(bytes);
    at::DataPtr block = std::move(it->second);
    blocks_.erase(it);
    held_ -= bytes;
    return block;
  }
  // Keeps `block` if it fits under the limit, else lets it go.
  void give(at::DataPtr block, size_t bytes) {
    if (held_ + bytes > limit_ || block.device().type() != c10::DeviceType::CPU) return;
    held_ += bytes;
    blocks_.emplace(bytes, std::move(block));
  }
  size_t held() const { return held_; }

 private:
  std::multimap<size_t, at::DataPtr> blocks_;
  size_t limit_ = 0, held_ = 0;
};

// Gives `t`'s storage `bytes` bytes of memory (from `cache` or its own allocator), or none (0),
// handing what it had to `cache`. The tensor keeps its shape; views of it (autograd's saved
// transposes) share the storage, so they see the memory come and go with it.
void resize_storage(const at::Tensor& t, size_t bytes, BlockCache& cache) {
  c10::StorageImpl* s = t.storage().unsafeGetStorageImpl();
  if (s->nbytes() == bytes) return;
  at::DataPtr old = s->set_data_ptr(bytes == 0 ? at::DataPtr(nullptr, s->device())
                                               : cache.take(s->allocator(), bytes));
  if (s->nbytes() > 0) cache.give(std::move(old), s->nbytes());
  s->set_nbytes(bytes);
}

// A flat tensor over `t`'s storage from element 0: what an all-gather writes into.
at::Tensor flat_over(const at::Tensor& t, int64_t numel) {
  at::Tensor out = at::empty({0}, t.options());
  out.set_(t.storage(), 0, {numel}, {1});
  return out;
}

}  // namespace

class TENAX_INTERNAL FullyShardedDataParallel::Impl
    : public std::enable_shared_from_this<FullyShardedDataParallel::Impl> {
 public:
  struct Param {
    ShardedParameter pub;
    int64_t rows = 0, row_numel = 0;  // dim 0 of the parameter and elements per row
    int64_t block_rows = 0;           // ceil(rows / dp): every rank's block, padded
    int64_t flat_offset = 0;          // of this rank's block in its unit's flat buffer
    int64_t block_numel() const { return block_rows * row_numel; }
  };
  enum class State { kSharded, kGathering, kGathered };
  struct Unit {
    std::vector<int> params;
    at::Tensor flat;  // this rank's blocks, one after another (padding rows are zero)
    State state = State::kSharded;
    std::vector<WorkHandle> gathers;
    int grads_expected = 0, grads_seen = 0;
  };
  struct Pending {  // a reduce-scatter in flight
    int param;
    WorkHandle work;
    at::Tensor input, output;
  };

  Impl(std::shared_ptr<Communicator> dp, FullyShardedOptions o) : dp_(std::move(dp)), o_(o) {}

  std::string where() const {
    return "FullyShardedDataParallel (dp rank " + std::to_string(dp_->rank()) + " of " +
           std::to_string(dp_->size()) + ")";
  }

  void build(torch::nn::Module& module,
             const std::vector<std::shared_ptr<torch::nn::Module>>& units) {
    std::map<const void*, int> unit_of;
    for (size_t u = 0; u < units.size(); ++u) {
      for (const auto& p : units[u]->named_parameters(/*recurse=*/true)) {
        const void* key = p.value().unsafeGetTensorImpl();
        auto [it, fresh] = unit_of.emplace(key, static_cast<int>(u));
        if (!fresh && it->second != static_cast<int>(u)) {
          throw ConfigError(where() + ": parameter " + p.key() + " is in units " +
                            std::to_string(it->second) + " and " + std::to_string(u) +
                            "; a parameter belongs to one unit");
        }
      }
    }
    units_.resize(units.size() + 1);  // the root unit last
    const int64_t d = dp_->size(), k = dp_->rank();
    std::map<const void*, int> seen;
    for (const auto& item : module.named_parameters(/*recurse=*/true)) {
      const at::Tensor& t = item.value();
      if (seen.count(t.unsafeGetTensorImpl())) continue;  // shared: sharded once
      seen[t.unsafeGetTensorImpl()] = static_cast<int>(params_.size());
      auto it = unit_of.find(t.unsafeGetTensorImpl());
      const int unit = it == unit_of.end() ? -1 : it->second;
      if (t.storage().unsafeGetStorageImpl()->allocator() == nullptr) {
        throw ConfigError(where() + ": parameter " + item.key() +
                          " has no allocator (memory not owned by LibTorch); it cannot be sharded");
      }
      Param p;
      p.pub.name = item.key();
      p.pub.param = t;
      p.pub.unit = unit;
      p.rows = t.dim() == 0 ? 1 : t.size(0);
      p.row_numel = p.rows == 0 ? 0 : t.numel() / p.rows;
      p.block_rows = (p.rows + d - 1) / d;
      p.pub.row_offset = std::min(p.rows, k * p.block_rows);
      Unit& owner = unit_of_param(p);
      if (!owner.params.empty()) {
        const at::Tensor& first = params_[owner.params.front()].pub.param;
        if (first.scalar_type() != t.scalar_type()) {
          throw ConfigError(where() + ": parameter " + item.key() + " is " +
                            c10::toString(t.scalar_type()) + " but " +
                            params_[owner.params.front()].pub.name + " of the same unit is " +
                            c10::toString(first.scalar_type()) + "; a unit shares one dtype");
        }
      }
      owner.params.push_back(static_cast<int>(params_.size()));
      if (t.requires_grad()) ++owner.grads_expected;
      params_.push_back(std::move(p));
    }
    at::NoGradGuard no_grad;
    for (auto& unit : units_) {
      int64_t numel = 0;
      for (int i : unit.params) {
        params_[i].flat_offset = numel;
        numel += params_[i].block_numel();
      }
      if (unit.params.empty()) continue;
      unit.flat = at::zeros({numel}, params_[unit.params.front()].pub.param.options());
      for (int i : unit.params) {
        Param& p = params_[i];
        const at::Tensor& t = p.pub.param;
        const int64_t mine = std::min(p.rows - p.pub.row_offset, p.block_rows);
        std::vector<int64_t> sizes = t.dim() == 0 ? std::vector<int64_t>{1} : t.sizes().vec();
        sizes[0] = mine;
        at::Tensor whole = t.reshape({p.rows, p.row_numel});
        at::Tensor shard = at::empty({0}, t.options());
        shard.set_(unit.flat.storage(), p.flat_offset, sizes, c10::contiguous_strides(sizes));
        shard.view({mine, p.row_numel}).copy_(whole.narrow(0, p.pub.row_offset, mine));
        shard.requires_grad_(t.requires_grad());
        p.pub.shard = shard;
      }
    }
    size_t largest = 0;
    for (size_t u = 0; u + 1 < units_.size(); ++u) {
      size_t bytes = 0;
      for (int i : units_[u].params) {
        const Param& p = params_[i];
        bytes += static_cast<size_t>(d * p.block_numel()) * p.pub.param.element_size();
      }
      largest = std::max(largest, bytes);
    }
    cache_.set_limit(2 * largest);
    for (auto& unit : units_) free(unit);
  }

  Unit& unit_of_param(const Param& p) {
    return units_[p.pub.unit < 0 ? units_.size() - 1 : static_cast<size_t>(p.pub.unit)];
  }
  Unit& root() { return units_.back(); }

  void hook(const std::shared_ptr<Impl>& self) {
    for (size_t i = 0; i < params_.size(); ++i) {
      const at::Tensor& t = params_[i].pub.param;
      if (!t.requires_grad() || params_[i].pub.unit < 0) continue;  // the root's: in sync()
      auto acc = torch::autograd::impl::grad_accumulator(t);
      std::weak_ptr<Impl> weak = self;
      acc->add_post_hook(std::make_unique<torch::autograd::utils::LambdaPostHook>(
          [weak, i](const torch::autograd::variable_list& outputs,
                    const torch::autograd::variable_list&) {
            if (auto me = weak.lock()) me->on_grad_ready(static_cast<int>(i));
            return outputs;
          }));
      accumulators_.push_back(acc);
    }
  }

  // Starts the all-gather of `unit`'s parameters, each straight into its own (regrown) memory.
  void gather(Unit& unit) {
    if (unit.state != State::kSharded) return;
    const int64_t d = dp_->size();
    for (int i : unit.params) {
      Param& p = params_[i];
      const int64_t padded = d * p.block_numel();
      resize_storage(p.pub.param, static_cast<size_t>(padded) * p.pub.param.element_size(),
                     cache_);
      if (padded == 0) continue;
      unit.gathers.push_back(dp_->all_gather_async(
          flat_over(p.pub.param, padded), unit.flat.narrow(0, p.flat_offset, p.block_numel())));
    }
    unit.state = State::kGathering;
  }

  void wait_gathered(Unit& unit, bool count_hit) {
    if (unit.state == State::kSharded)
      gather(unit);
    else if (count_hit && unit.state == State::kGathering)
      ++prefetch_hits_;
    for (auto& w : unit.gathers) w->wait();
    unit.gathers.clear();
    unit.state = State::kGathered;
  }

  void free(Unit& unit) {
    for (auto& w : unit.gathers) w->wait();
    unit.gathers.clear();
    for (int i : unit.params) resize_storage(params_[i].pub.param, 0, cache_);
    unit.state = State::kSharded;
  }

  void prefetch(size_t u) {
    if (o_.prefetch && u < units_.size() - 1) gather(units_[u]);
  }

  // Backward has reached unit `u` (its output's gradient is complete).
  void before_backward(size_t u) {
    std::lock_guard<std::mutex> lock(mu_);
    Unit& unit = units_[u];
    wait_gathered(unit, true);
    unit.grads_seen = 0;
    if (u > 0) prefetch(u - 1);
  }

  // The parameter's gradient of this backward pass is complete: reduce-scatter it, drop the
  // whole gradient, and free the unit once all of its gradients are on their way.
  void on_grad_ready(int i) {
    std::lock_guard<std::mutex> lock(mu_);
    Param& p = params_[i];
    at::Tensor g = p.pub.param.grad();
    if (!g.defined()) return;
    start_reduce_scatter(i, g);
    p.pub.param.mutable_grad() = at::Tensor();
    Unit& unit = unit_of_param(p);
    if (++unit.grads_seen == unit.grads_expected) {
      unit.grads_seen = 0;
      free(unit);
    }
    drain(/*all=*/false);
  }

  void start_reduce_scatter(int i, const at::Tensor& grad) {
    Param& p = params_[i];
    const int64_t d = dp_->size(), numel = d * p.block_numel();
    if (numel == 0) return;
    const auto wire =
        o_.reduce_dtype == c10::ScalarType::Undefined ? grad.scalar_type() : o_.reduce_dtype;
    at::Tensor input;
    if (numel == grad.numel() && wire == grad.scalar_type() && grad.is_contiguous()) {
      input = grad.reshape({-1});
    } else {
      input = at::zeros({numel}, grad.options().dtype(wire));
      input.narrow(0, 0, grad.numel()).copy_(grad.reshape({-1}));
    }
    at::Tensor output = at::empty({p.block_numel()}, input.options());
    pending_.push_back(
        {i, dp_->reduce_scatter_async(output, input, ReduceOp::kAvg), input, output});
  }

  // Accumulates finished reduce-scatters into the shards' gradients, in the order they started;
  // `all`: waits for every one.
  void drain(bool all) {
    while (!pending_.empty() && (all || pending_.front().work->is_completed())) {
      Pending done = std::move(pending_.front());
      pending_.pop_front();
      done.work->wait();
      at::Tensor& shard = params_[done.param].pub.shard;
      const int64_t n = shard.numel();
      at::Tensor part = done.output.narrow(0, 0, n).view(shard.sizes());
      if (shard.grad().defined()) {
        shard.mutable_grad().add_(part);
      } else {
        shard.mutable_grad() = part.to(shard.scalar_type(), /*non_blocking=*/false, /*copy=*/true);
      }
    }
  }

  void sync() {
    std::lock_guard<std::mutex> lock(mu_);
    at::NoGradGuard no_grad;
    for (int i : root().params) {
      Param& p = params_[i];
      if (!p.pub.param.requires_grad()) continue;
      at::Tensor g = p.pub.param.grad();
      start_reduce_scatter(i,
                           g.defined() ? g : at::zeros(p.pub.param.sizes(), p.pub.param.options()));
      p.pub.param.mutable_grad() = at::Tensor();
    }
    drain(/*all=*/true);
    for (auto& p : params_) {
      if (p.pub.shard.requires_grad() && !p.pub.shard.grad().defined()) {
        p.pub.shard.mutable_grad() = at::zeros_like(p.pub.shard);
      }
      if (p.pub.param.grad().defined()) p.pub.param.mutable_grad() = at::Tensor();
    }
    for (auto& unit : units_) {
      unit.grads_seen = 0;
      free(unit);
    }
  }

  std::shared_ptr<Communicator> dp_;
  FullyShardedOptions o_;
  std::vector<Param> params_;
  std::vector<Unit> units_;
  std::deque<Pending> pending_;
  // shared_ptr or intrusive_ptr, as the LibTorch version has it.
  std::vector<decltype(torch::autograd::impl::grad_accumulator(at::Tensor()))> accumulators_;
  std::vector<ShardedParameter> public_;
  int64_t prefetch_hits_ = 0;
  BlockCache cache_;
  std::mutex mu_;
};

FullyShardedDataParallel::FullyShardedDataParallel(
    std::shared_ptr<torch::nn::Module> module,
    std::vector<std::shared_ptr<torch::nn::Module>> units, std::shared_ptr<Communicator> dp,
    FullyShardedOptions options)
    : module_(std::move(module)), impl_(std::make_shared<Impl>(std::move(dp), options)) {
  {
    at::NoGradGuard no_grad;
    for (auto& p : module_->parameters()) impl_->dp_->broadcast(p, 0);
    for (auto& b : module_->buffers()) impl_->dp_->broadcast(b, 0);
  }
  impl_->build(*module_, units);
  impl_->hook(impl_);
  for (const auto& p : impl_->params_) impl_->public_.push_back(p.pub);
}

FullyShardedDataParallel::~FullyShardedDataParallel() {
  // Leave the module's parameters holding memory again only if nothing is in flight.
  std::lock_guard<std::mutex> lock(impl_->mu_);
  for (auto& p : impl_->pending_) {
    try {
      p.work->wait();
    } catch (...) {  // a broken communicator: nothing more to wait for
    }
  }
  impl_->pending_.clear();
}

at::Tensor FullyShardedDataParallel::forward(const std::function<at::Tensor()>& fn) {
  {
    std::lock_guard<std::mutex> lock(impl_->mu_);
    impl_->wait_gathered(impl_->root(), false);
    impl_->prefetch(0);
  }
  at::Tensor y = fn();
  if (!at::GradMode::is_enabled()) reshard();
  return y;
}

at::Tensor FullyShardedDataParallel::run_unit(size_t u, const std::function<at::Tensor()>& fn) {
  auto& impl = *impl_;
  if (u + 1 >= impl.units_.size()) {
    throw ConfigError(impl.where() + ": unit " + std::to_string(u) + " of " +
                      std::to_string(impl.units_.size() - 1));
  }
  {
    std::lock_guard<std::mutex> lock(impl.mu_);
    impl.wait_gathered(impl.units_[u], true);
    impl.prefetch(u + 1);
  }
  at::Tensor y = fn();
  const bool backward = at::GradMode::is_enabled() && y.requires_grad();
  if (backward) {
    std::weak_ptr<Impl> weak = impl_;
    y.register_hook([weak, u](const at::Tensor&) {
      if (auto me = weak.lock()) me->before_backward(u);
    });
  }
  // The last unit's backward is the next to run: it keeps its parameters (freed after it).
  if (backward && u + 2 == impl.units_.size()) return y;
  std::lock_guard<std::mutex> lock(impl.mu_);
  impl.free(impl.units_[u]);
  return y;
}

void FullyShardedDataParallel::sync() { impl_->sync(); }

void FullyShardedDataParallel::reshard() {
  std::lock_guard<std::mutex> lock(impl_->mu_);
  for (auto& unit : impl_->units_) impl_->free(unit);
}

std::vector<at::Tensor> FullyShardedDataParallel::parameters() const {
  std::vector<at::Tensor> out;
  for (const auto& p : impl_->params_) out.push_back(p.pub.shard);
  return out;
}

const std::vector<ShardedParameter>& FullyShardedDataParallel::sharded_parameters() const {
  return impl_->public_;
}

size_t FullyShardedDataParallel::num_units() const { return impl_->units_.size() - 1; }

int64_t FullyShardedDataParallel::parameter_bytes() const {
  int64_t bytes = 0;
  for (const auto& unit : impl_->units_) {
    if (unit.flat.defined()) bytes += unit.flat.nbytes();
  }
  for (const auto& p : impl_->params_) {
    bytes += static_cast<int64_t>(p.pub.param.storage().nbytes());
  }
  return bytes;
}

int64_t FullyShardedDataParallel::cached_bytes() const {
  return static_cast<int64_t>(impl_->cache_.held());
}

int64_t FullyShardedDataParallel::prefetch_hits() const { return impl_->prefetch_hits_; }

}  // namespace tenax
