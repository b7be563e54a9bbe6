#include "tenax/checkpoint/module_state.h"

#include <torch/torch.h>

#include <map>
#include <sstream>
#include <type_traits>

#include "tenax/parallel/tensor_parallel.h"

namespace tenax {
namespace {

// How a parameter is split over its tp group: the dimension and the group, or none.
struct Split {
  int dim = -1;
  int rank = 0, size = 1;
};

std::map<const void*, Split> tensor_parallel_splits(const torch::nn::Module& module) {
  std::map<const void*, Split> splits;
  auto mark = [&](const torch::Tensor& t, int dim, const Communicator& g) {
    if (t.defined() && g.size() > 1) splits[t.unsafeGetTensorImpl()] = {dim, g.rank(), g.size()};
  };
  for (const auto& m : module.modules(/*include_self=*/true)) {
    if (auto* c = m->as<ColumnParallelLinearImpl>()) {
      mark(c->weight, 0, *c->group());
      mark(c->bias, 0, *c->group());
    } else if (auto* r = m->as<RowParallelLinearImpl>()) {
      mark(r->weight, 1, *r->group());
    } else if (auto* e = m->as<VocabParallelEmbeddingImpl>()) {
      mark(e->weight, 0, *e->group());
    }
  }
  return splits;
}

// A tensor the state refers to: `tensor` (live: saved from, restored into) is rows
// [row_offset, row_offset + tensor.size(0)) of the module parameter `key`, whose shape is
// `whole` (the part a fully sharded rank holds; all of it otherwise).
struct Held {
  std::string name;
  torch::Tensor tensor;
  const void* key;
  std::vector<int64_t> whole;
  int64_t row_offset = 0;
};

std::vector<Held> held_parameters(const torch::nn::Module& module) {
  std::vector<Held> out;
  for (const auto& p : module.named_parameters()) {
    out.push_back({p.key(), p.value(), p.value().unsafeGetTensorImpl(), p.value().sizes().vec()});
  }
  return out;
}

std::vector<Held> held_parameters(const FullyShardedDataParallel& fsdp) {
  std::vector<Held> out;
  for (const auto& s : fsdp.sharded_parameters()) {
    out.push_back(
        {s.name, s.shard, s.param.unsafeGetTensorImpl(), s.param.sizes().vec(), s.row_offset});
  }
  return out;
}

// Adds `t` (h's tensor or a tensor shaped like it) as its part of the global tensor: split over
// tp as the parameter is, and by rows over dp when fully sharded.
void add_part(StateDict& state, const std::string& name, const torch::Tensor& t,
              const std::map<const void*, Split>& splits, const Held& h) {
  auto it = splits.find(h.key);
  const bool rows = h.row_offset != 0 || h.whole != t.sizes().vec();
  if (it == splits.end() && !rows) {
    state.add(name, t);
    return;
  }
  std::vector<int64_t> global = h.whole, offsets(h.whole.size(), 0);
  if (it != splits.end()) {
    const Split& s = it->second;
    global[s.dim] = h.whole[s.dim] * s.size;
    offsets[s.dim] = h.whole[s.dim] * s.rank;
  }
  if (!offsets.empty()) offsets[0] += h.row_offset;
  state.add_shard(name, t, global, offsets);
}

std::string named(const NameMap& rename, const std::string& name) {
  return rename ? rename(name) : name;
}

// The key of `param` in an optimizer's state: its TensorImpl's address, as a pointer (LibTorch
// 2.15 on) or printed as a string (before).
template <typename Optimizer>
auto optimizer_state_key(Optimizer& optimizer, const torch::Tensor& param) {
  using Key = typename std::decay_t<decltype(optimizer.state())>::key_type;
  void* impl = param.unsafeGetTensorImpl();
  if constexpr (std::is_same_v<Key, std::string>) {
    std::ostringstream out;
    out << impl;
    return out.str();
  } else {
    return static_cast<Key>(impl);
  }
}

// The AdamW state of `param`, created as AdamW's first step would (zero moments, step 0) when
// it has none yet.
torch::optim::AdamWParamState& adamw_state(torch::optim::AdamW& optimizer,
                                           const torch::Tensor& param) {
  auto& all = optimizer.state();
  const auto key = optimizer_state_key(optimizer, param);
  auto it = all.find(key);
  if (it == all.end()) {
    auto st = std::make_unique<torch::optim::AdamWParamState>();
    st->step(0);
    st->exp_avg(torch::zeros_like(param, at::MemoryFormat::Preserve));
    st->exp_avg_sq(torch::zeros_like(param, at::MemoryFormat::Preserve));
    it = all.emplace(key, std::move(st)).first;
  }
  return static_cast<torch::optim::AdamWParamState&>(*it->second);
}

void add_parameters(StateDict& state, const torch::nn::Module& module,
                    const std::vector<Held>& held, const std::string& prefix,
                    const NameMap& rename) {
  auto splits = tensor_parallel_splits(module);
  for (const auto& h : held) {
    add_part(state, prefix + named(rename, h.name), h.tensor.detach(), splits, h);
  }
  for (const auto& b : module.named_buffers()) {
    state.add(prefix + named(rename, b.key()), b.value());
  }
}

void add_adamw(StateDict& state, torch::optim::AdamW& optimizer, const torch::nn::Module& module,
               const std::vector<Held>& held, const std::string& prefix, const NameMap& rename) {
  auto splits = tensor_parallel_splits(module);
  for (const auto& h : held) {
    bool holds = false;
    for (const auto& g : optimizer.param_groups()) {
      for (const auto& q : g.params()) holds |= q.is_same(h.tensor);
    }
    if (!holds) continue;
    auto& st = adamw_state(optimizer, h.tensor);
    const std::string name = prefix + named(rename, h.name);
    add_part(state, name + ".exp_avg", st.exp_avg(), splits, h);
    add_part(state, name + ".exp_avg_sq", st.exp_avg_sq(), splits, h);
    state.set_int(name + ".step", st.step());
  }
}

}  // namespace

void add_module_state(StateDict& state, const torch::nn::Module& module, const std::string& prefix,
                      const NameMap& rename) {
  add_parameters(state, module, held_parameters(module), prefix, rename);
}

void add_module_state(StateDict& state, const FullyShardedDataParallel& fsdp,
                      const std::string& prefix, const NameMap& rename) {
  add_parameters(state, *fsdp.module(), held_parameters(fsdp), prefix, rename);
}

void add_adamw_state(StateDict& state, torch::optim::AdamW& optimizer,
                     const torch::nn::Module& module, const std::string& prefix,
                     const NameMap& rename) {
  add_adamw(state, optimizer, module, held_parameters(module), prefix, rename);
}

void add_adamw_state(StateDict& state, torch::optim::AdamW& optimizer,
                     const FullyShardedDataParallel& fsdp, const std::string& prefix,
                     const NameMap& rename) {
  add_adamw(state, optimizer, *fsdp.module(), held_parameters(fsdp), prefix, rename);
}

namespace {

// Calls fn(step-count name, state) for every held tensor that has AdamW state.
void for_each_adamw_step(
    torch::optim::AdamW& optimizer, const std::vector<Held>& held, const std::string& prefix,
    const NameMap& rename,
    const std::function<void(const std::string&, torch::optim::AdamWParamState&)>& fn) {
  auto& all = optimizer.state();
  for (const auto& h : held) {
    auto it = all.find(optimizer_state_key(optimizer, h.tensor));
    if (it == all.end()) continue;
    fn(prefix + named(rename, h.name) + ".step",
       static_cast<torch::optim::AdamWParamState&>(*it->second));
  }
}

void record_steps(StateDict& state, torch::optim::AdamW& optimizer, const std::vector<Held>& held,
                  const std::string& prefix, const NameMap& rename) {
  for_each_adamw_step(optimizer, held, prefix, rename,
                      [&](const std::string& name, torch::optim::AdamWParamState& st) {
                        state.set_int(name, st.step());
                      });
}

void apply_steps(const StateDict& state, torch::optim::AdamW& optimizer,
                 const std::vector<Held>& held, const std::string& prefix, const NameMap& rename) {
  for_each_adamw_step(optimizer, held, prefix, rename,
                      [&](const std::string& name, torch::optim::AdamWParamState& st) {
                        if (state.ints().count(name)) st.step(state.get_int(name));
                      });
}

}  // namespace

void record_adamw_steps(StateDict& state, torch::optim::AdamW& optimizer,
                        const torch::nn::Module& module, const std::string& prefix,
                        const NameMap& rename) {
  record_steps(state, optimizer, held_parameters(module), prefix, rename);
}

void record_adamw_steps(StateDict& state, torch::optim::AdamW& optimizer,
                        const FullyShardedDataParallel& fsdp, const std::string& prefix,
                        const NameMap& rename) {
  record_steps(state, optimizer, held_parameters(fsdp), prefix, rename);
}

void apply_adamw_steps(const StateDict& state, torch::optim::AdamW& optimizer,
                       const torch::nn::Module& module, const std::string& prefix,
                       const NameMap& rename) {
  apply_steps(state, optimizer, held_parameters(module), prefix, rename);
}

void apply_adamw_steps(const StateDict& state, torch::optim::AdamW& optimizer,
                       const FullyShardedDataParallel& fsdp, const std::string& prefix,
                       const NameMap& rename) {
  apply_steps(state, optimizer, held_parameters(fsdp), prefix, rename);
}

namespace {

torch::optim::AdamWParamState& zero_state(ZeroAdamW& optimizer) {
  return adamw_state(optimizer.shard_optimizer(), optimizer.shard());
}

}  // namespace

void add_zero_adamw_state(StateDict& state, ZeroAdamW& optimizer, const std::string& prefix) {
  auto& st = zero_state(optimizer);
  const int64_t total = optimizer.total_numel(), off = optimizer.shard_offset();
  const int64_t n = std::max<int64_t>(0, std::min(optimizer.shard_numel(), total - off));
  // Views of the state's first n elements: the part inside the real parameters.
  state.add_shard(prefix + "exp_avg", st.exp_avg().narrow(0, 0, n), {total}, {std::min(off, total)});
  state.add_shard(prefix + "exp_avg_sq", st.exp_avg_sq().narrow(0, 0, n), {total},
                  {std::min(off, total)});
  state.set_int(prefix + "step", st.step());
}

void record_zero_adamw_step(StateDict& state, ZeroAdamW& optimizer, const std::string& prefix) {
  state.set_int(prefix + "step", zero_state(optimizer).step());
}

void apply_zero_adamw_state(const StateDict& state, ZeroAdamW& optimizer,
                            const std::string& prefix) {
  zero_state(optimizer).step(state.get_int(prefix + "step"));
  optimizer.reload_parameters();
}

}  // namespace tenax
