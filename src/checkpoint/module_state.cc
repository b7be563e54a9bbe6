#include "tenax/checkpoint/module_state.h"

#include <torch/torch.h>

#include <map>

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

void add_part(StateDict& state, const std::string& name, const torch::Tensor& t,
              const std::map<const void*, Split>& splits, const void* key) {
  auto it = splits.find(key);
  if (it == splits.end()) {
    state.add(name, t);
    return;
  }
  const Split& s = it->second;
  std::vector<int64_t> global = t.sizes().vec(), offsets(t.dim(), 0);
  global[s.dim] = t.size(s.dim) * s.size;
  offsets[s.dim] = t.size(s.dim) * s.rank;
  state.add_shard(name, t, global, offsets);
}

std::string named(const NameMap& rename, const std::string& name) {
  return rename ? rename(name) : name;
}

// The AdamW state of `param`, created as AdamW's first step would (zero moments, step 0) when
// it has none yet.
torch::optim::AdamWParamState& adamw_state(torch::optim::AdamW& optimizer,
                                           const torch::Tensor& param) {
  auto& all = optimizer.state();
  const std::string key = c10::guts::to_string(param.unsafeGetTensorImpl());
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

}  // namespace

void add_module_state(StateDict& state, const torch::nn::Module& module, const std::string& prefix,
                      const NameMap& rename) {
  auto splits = tensor_parallel_splits(module);
  for (const auto& p : module.named_parameters()) {
    add_part(state, prefix + named(rename, p.key()), p.value().detach(), splits,
             p.value().unsafeGetTensorImpl());
  }
  for (const auto& b : module.named_buffers()) {
    state.add(prefix + named(rename, b.key()), b.value());
  }
}

void add_adamw_state(StateDict& state, torch::optim::AdamW& optimizer,
                     const torch::nn::Module& module, const std::string& prefix,
                     const NameMap& rename) {
  auto splits = tensor_parallel_splits(module);
  for (const auto& p : module.named_parameters()) {
    bool held = false;
    for (const auto& g : optimizer.param_groups()) {
      for (const auto& q : g.params()) held |= q.is_same(p.value());
    }
    if (!held) continue;
    auto& st = adamw_state(optimizer, p.value());
    const std::string name = prefix + named(rename, p.key());
    const void* id = p.value().unsafeGetTensorImpl();
    add_part(state, name + ".exp_avg", st.exp_avg(), splits, id);
    add_part(state, name + ".exp_avg_sq", st.exp_avg_sq(), splits, id);
    state.set_int(name + ".step", st.step());
  }
}

namespace {

// Calls fn(step-count name, state) for every parameter of `module` that has AdamW state.
void for_each_adamw_step(torch::optim::AdamW& optimizer, const torch::nn::Module& module,
                         const std::string& prefix, const NameMap& rename,
                         const std::function<void(const std::string&,
                                                  torch::optim::AdamWParamState&)>& fn) {
  auto& all = optimizer.state();
  for (const auto& p : module.named_parameters()) {
    auto it = all.find(c10::guts::to_string(p.value().unsafeGetTensorImpl()));
    if (it == all.end()) continue;
    fn(prefix + named(rename, p.key()) + ".step",
       static_cast<torch::optim::AdamWParamState&>(*it->second));
  }
}

}  // namespace

void record_adamw_steps(StateDict& state, torch::optim::AdamW& optimizer,
                        const torch::nn::Module& module, const std::string& prefix,
                        const NameMap& rename) {
  for_each_adamw_step(optimizer, module, prefix, rename,
                      [&](const std::string& name, torch::optim::AdamWParamState& st) {
                        state.set_int(name, st.step());
                      });
}

void apply_adamw_steps(const StateDict& state, torch::optim::AdamW& optimizer,
                       const torch::nn::Module& module, const std::string& prefix,
                       const NameMap& rename) {
  for_each_adamw_step(optimizer, module, prefix, rename,
                      [&](const std::string& name, torch::optim::AdamWParamState& st) {
                        if (state.ints().count(name)) st.step(state.get_int(name));
                      });
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
