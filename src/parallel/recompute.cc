#include "tenax/parallel/recompute.h"

#include <ATen/autocast_mode.h>
#include <ATen/core/ivalue.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/csrc/autograd/functions/accumulate_grad.h>
#include <torch/custom_class.h>

#include <unordered_set>

#include "tenax/core/error.h"

namespace tenax {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// The autocast state of this thread (mixed precision): the block runs again under the one it
// first ran under, so it computes the same values in the same dtypes.
struct AutocastState {
  bool cpu = at::autocast::is_autocast_enabled(at::kCPU);
  bool gpu = at::autocast::is_autocast_enabled(at::kCUDA);
  at::ScalarType cpu_dtype = at::autocast::get_autocast_dtype(at::kCPU);
  at::ScalarType gpu_dtype = at::autocast::get_autocast_dtype(at::kCUDA);

  void apply() const {
    at::autocast::set_autocast_enabled(at::kCPU, cpu);
    at::autocast::set_autocast_dtype(at::kCPU, cpu_dtype);
    at::autocast::set_autocast_enabled(at::kCUDA, gpu);
    at::autocast::set_autocast_dtype(at::kCUDA, gpu_dtype);
  }
};

// Puts `state` in force while alive; then the one before.
class AutocastScope {
 public:
  explicit AutocastScope(const AutocastState& state) { state.apply(); }
  ~AutocastScope() { before_.apply(); }

 private:
  const AutocastState before_;
};

// Carries the block, and the autocast state it ran under, through the autograd context (an
// IValue capsule owns it).
struct Block : torch::CustomClassHolder {
  explicit Block(RecomputeFn f) : fn(std::move(f)) {}
  RecomputeFn fn;
  AutocastState autocast;
};

Block& block_of(const c10::IValue& v) { return *static_cast<Block*>(v.toCapsule().get()); }

// Throws unless every leaf the recomputed graph reaches is an input or a declared parameter:
// another one would silently get no gradient.
void check_leaves(const at::Tensor& out, const std::vector<at::Tensor>& known) {
  std::unordered_set<const void*> ok;
  for (const auto& t : known) ok.insert(t.unsafeGetTensorImpl());
  std::unordered_set<const torch::autograd::Node*> seen;
  std::vector<torch::autograd::Node*> stack = {out.grad_fn().get()};
  while (!stack.empty()) {
    torch::autograd::Node* n = stack.back();
    stack.pop_back();
    if (n == nullptr || !seen.insert(n).second) continue;
    if (auto* acc = dynamic_cast<torch::autograd::AccumulateGrad*>(n)) {
      if (!ok.count(acc->variable.unsafeGetTensorImpl())) {
        throw ConfigError("recompute: the block uses a tensor that requires a gradient (shape " +
                          c10::str(acc->variable.sizes()) +
                          ") but is neither an input nor one of the parameters passed; pass "
                          "the block's parameters (module->parameters())");
      }
      continue;
    }
    for (const auto& e : n->next_edges()) stack.push_back(e.function.get());
  }
}

// Inputs and parameters arrive as one list: inputs first, `n` of them.
struct RecomputeFunction : torch::autograd::Function<RecomputeFunction> {
  static at::Tensor forward(AutogradContext* ctx, at::TensorList args, int64_t n,
                            c10::IValue block) {
    ctx->saved_data["block"] = block;
    ctx->saved_data["n"] = n;
    ctx->save_for_backward(args.vec());
    // Autograd is off here: nothing inside the block is kept.
    return block_of(block).fn(std::vector<at::Tensor>(args.begin(), args.begin() + n));
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list saved = ctx->get_saved_variables();
    const auto n = static_cast<size_t>(ctx->saved_data["n"].toInt());
    variable_list result(saved.size() + 2);  // one per tensor, none for n and the block
    std::vector<at::Tensor> in, known;
    for (size_t i = 0; i < n; ++i) {
      in.push_back(saved[i].detach().requires_grad_(saved[i].requires_grad()));
    }
    at::Tensor out;
    {
      Block& block = block_of(ctx->saved_data["block"]);
      const AutocastScope as_before(block.autocast);
      at::AutoGradMode on(true);
      out = block.fn(in);
    }
    if (!out.requires_grad()) return result;
    // Gradients with respect to the inputs and parameters, returned to the outer graph (whose
    // accumulation into the parameters runs their hooks there, not in this inner pass).
    std::vector<at::Tensor> wrt;
    std::vector<size_t> where;
    for (size_t i = 0; i < saved.size(); ++i) {
      const at::Tensor& t = i < n ? in[i] : saved[i];
      known.push_back(t);
      if (t.requires_grad()) {
        wrt.push_back(t);
        where.push_back(i);
      }
    }
    check_leaves(out, known);
    if (wrt.empty()) return result;
    auto g = torch::autograd::grad({out}, wrt, {grads[0]}, /*retain_graph=*/false,
                                   /*create_graph=*/false, /*allow_unused=*/true);
    for (size_t k = 0; k < where.size(); ++k) result[where[k]] = g[k];
    return result;
  }
};

}  // namespace

at::Tensor recompute(RecomputeFn fn, const std::vector<at::Tensor>& inputs,
                     const std::vector<at::Tensor>& parameters) {
  for (size_t i = 0; i < inputs.size(); ++i) {
    if (!inputs[i].defined()) {
      throw ConfigError("recompute: input " + std::to_string(i) + " is undefined");
    }
  }
  if (!at::GradMode::is_enabled()) return fn(inputs);
  std::vector<at::Tensor> args = inputs;
  for (const auto& p : parameters) {
    if (p.defined()) args.push_back(p);
  }
  return RecomputeFunction::apply(
      at::TensorList(args), static_cast<int64_t>(inputs.size()),
      c10::IValue::make_capsule(c10::make_intrusive<Block>(std::move(fn))));
}

Recompute parse_recompute(const std::string& text, const std::string& flag) {
  if (text == "none") return Recompute::kNone;
  if (text == "full") return Recompute::kFull;
  if (text == "selective") return Recompute::kSelective;
  throw ConfigError(flag + ": '" + text + "' is not one of none, full, selective");
}

const char* recompute_name(Recompute mode) {
  switch (mode) {
    case Recompute::kFull:
      return "full";
    case Recompute::kSelective:
      return "selective";
    default:
      return "none";
  }
}

}  // namespace tenax
