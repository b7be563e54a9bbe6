#include "model.h"

#include <torch/torch.h>

#include <tenax/core/error.h>

#include <cmath>

namespace llama {

RMSNormImpl::RMSNormImpl(int64_t dim, double eps) : eps_(eps) {
  weight = register_parameter("weight", torch::ones({dim}));
}

torch::Tensor RMSNormImpl::forward(const torch::Tensor& x) {
  return x * torch::rsqrt(x.pow(2).mean(-1, /*keepdim=*/true) + eps_) * weight;
}

Rope::Rope(int64_t head_dim, int64_t max_seq, double theta) {
  const int64_t half = head_dim / 2;
  auto inv_freq =
      torch::pow(theta, -torch::arange(0, half, torch::kFloat64) * 2.0 / double(head_dim));
  auto angles = torch::outer(torch::arange(max_seq, torch::kFloat64), inv_freq);  // [seq, half]
  angles = torch::cat({angles, angles}, -1);                                        // [seq, hd]
  cos = angles.cos().to(torch::kFloat32);
  sin = angles.sin().to(torch::kFloat32);
}

torch::Tensor Rope::apply(const torch::Tensor& x) const {
  const int64_t seq = x.size(2), half = x.size(3) / 2;
  auto c = cos.narrow(0, 0, seq).to(x.device());
  auto s = sin.narrow(0, 0, seq).to(x.device());
  auto rotated = torch::cat({-x.narrow(3, half, half), x.narrow(3, 0, half)}, 3);
  return x * c + rotated * s;
}

namespace {

void require_divides(const char* what, int64_t n, const tenax::Communicator& tp) {
  if (n % tp.size() != 0) {
    throw tenax::ConfigError("--tp " + std::to_string(tp.size()) + " does not divide " + what +
                             " = " + std::to_string(n));
  }
}

// softmax(q kᵀ / √d + causal mask) v, per head: q, k, v [batch, heads, seq, head_dim].
torch::Tensor core_attention(const torch::Tensor& q, const torch::Tensor& k,
                             const torch::Tensor& v) {
  const int64_t t = q.size(2);
  auto scores = torch::matmul(q, k.transpose(-2, -1)) / std::sqrt(double(q.size(3)));
  auto future = torch::ones({t, t}, torch::dtype(torch::kBool).device(q.device())).triu(1);
  scores = scores.masked_fill(future, -std::numeric_limits<float>::infinity());
  return torch::matmul(torch::softmax(scores, -1, torch::kFloat), v);  // fp32 under bf16 too
}

}  // namespace

AttentionImpl::AttentionImpl(const LlamaConfig& c, std::shared_ptr<tenax::Communicator> tp)
    : heads_(c.heads / tp->size()),
      kv_heads_(c.kv_heads / tp->size()),
      head_dim_(c.head_dim()) {
  require_divides("heads", c.heads, *tp);
  require_divides("kv_heads", c.kv_heads, *tp);
  const int64_t kv_dim = c.kv_heads * head_dim_;
  q_ = register_module("q", tenax::ColumnParallelLinear(c.dim, c.dim, tp, false, false));
  k_ = register_module("k", tenax::ColumnParallelLinear(c.dim, kv_dim, tp, false, false));
  v_ = register_module("v", tenax::ColumnParallelLinear(c.dim, kv_dim, tp, false, false));
  o_ = register_module("o", tenax::RowParallelLinear(c.dim, c.dim, tp, true, false));
}

torch::Tensor AttentionImpl::forward(const torch::Tensor& x, const Rope& rope) {
  const int64_t b = x.size(0), t = x.size(1);
  auto q = q_(x).view({b, t, heads_, head_dim_}).transpose(1, 2);
  auto k = k_(x).view({b, t, kv_heads_, head_dim_}).transpose(1, 2);
  auto v = v_(x).view({b, t, kv_heads_, head_dim_}).transpose(1, 2);
  q = rope.apply(q);
  k = rope.apply(k);
  if (heads_ != kv_heads_) {  // each K/V head serves heads/kv_heads consecutive query heads
    k = k.repeat_interleave(heads_ / kv_heads_, 1);
    v = v.repeat_interleave(heads_ / kv_heads_, 1);
  }
  auto out = selective_ ? tenax::recompute(
                              [](const std::vector<torch::Tensor>& in) {
                                return core_attention(in[0], in[1], in[2]);
                              },
                              {q, k, v})
                        : core_attention(q, k, v);
  return o_(out.transpose(1, 2).reshape({b, t, heads_ * head_dim_}));
}

FeedForwardImpl::FeedForwardImpl(const LlamaConfig& c, std::shared_ptr<tenax::Communicator> tp) {
  require_divides("ffn", c.ffn, *tp);
  gate_ = register_module("gate", tenax::ColumnParallelLinear(c.dim, c.ffn, tp, false, false));
  up_ = register_module("up", tenax::ColumnParallelLinear(c.dim, c.ffn, tp, false, false));
  down_ = register_module("down", tenax::RowParallelLinear(c.ffn, c.dim, tp, true, false));
}

torch::Tensor FeedForwardImpl::forward(const torch::Tensor& x) {
  return down_(torch::silu(gate_(x)) * up_(x));
}

DecoderLayerImpl::DecoderLayerImpl(const LlamaConfig& c, std::shared_ptr<tenax::Communicator> tp) {
  attention_norm_ = register_module("attention_norm", RMSNorm(c.dim, c.norm_eps));
  attention_ = register_module("attention", Attention(c, tp));
  mlp_norm_ = register_module("mlp_norm", RMSNorm(c.dim, c.norm_eps));
  mlp_ = register_module("mlp", FeedForward(c, tp));
}

torch::Tensor DecoderLayerImpl::body(const torch::Tensor& x, const Rope& rope) {
  auto h = x + attention_(attention_norm_(x), rope);
  return h + mlp_(mlp_norm_(h));
}

torch::Tensor DecoderLayerImpl::forward(const torch::Tensor& x, const Rope& rope) {
  if (!full_recompute_) return body(x, rope);
  return tenax::recompute(
      [this, &rope](const std::vector<torch::Tensor>& in) { return body(in[0], rope); }, {x},
      parameters());
}

void DecoderLayerImpl::set_recompute(tenax::Recompute mode) {
  full_recompute_ = mode == tenax::Recompute::kFull;
  attention_->set_selective_recompute(mode == tenax::Recompute::kSelective);
}

LlamaImpl::LlamaImpl(const LlamaConfig& c, int64_t max_seq, std::shared_ptr<tenax::Communicator> tp,
                     int pp_rank, int pp_size)
    : c_(c), tp_(tp), pp_rank_(pp_rank), pp_size_(pp_size),
      rope_(c.head_dim(), max_seq, c.rope_theta) {
  validate(c);
  require_divides("vocab", c.vocab, *tp);
  if (pp_size > c.layers) {
    throw tenax::ConfigError("--pp " + std::to_string(pp_size) + " exceeds the " +
                             std::to_string(c.layers) + " layers of preset " + c.name);
  }
  if (c.tie_embeddings && pp_size > 1) {
    throw tenax::ConfigError("preset " + c.name + " ties its embeddings: use --pp 1");
  }
  // Draw every weight in model order; keep this stage's.
  const LayerRange mine = stage_layers(c, pp_rank, pp_size);
  auto embedding = tenax::VocabParallelEmbedding(c.vocab, c.dim, tp);
  if (first_stage()) embedding_ = register_module("embedding", embedding);
  for (int64_t l = 0; l < c.layers; ++l) {
    DecoderLayer layer(c, tp);
    if (l >= mine.first && l < mine.first + mine.count) layers_->push_back(layer);
  }
  register_module("layers", layers_);
  if (last_stage()) {
    norm_ = register_module("norm", RMSNorm(c.dim, c.norm_eps));
    if (c.tie_embeddings) {
      output_ = nullptr;
    } else {
      output_ = register_module("output", tenax::ColumnParallelLinear(c.dim, c.vocab, tp, false, false));
    }
  }
  for (auto& m : modules(/*include_self=*/false)) {
    if (auto* norm = m->as<RMSNormImpl>()) replicated_.insert(norm->weight.unsafeGetTensorImpl());
  }
}

void LlamaImpl::set_recompute(tenax::Recompute mode) {
  for (const auto& layer : *layers_) layer->as<DecoderLayerImpl>()->set_recompute(mode);
}

torch::Tensor LlamaImpl::forward(const torch::Tensor& x) {
  torch::Tensor h = first_stage() ? embedding_(x) : x;
  for (const auto& layer : *layers_) h = layer->as<DecoderLayerImpl>()->forward(h, rope_);
  if (!last_stage()) return h;
  h = norm_(h);
  if (output_) return output_(h);
  // Tied: this rank's vocabulary rows of the embedding table are its slice of the output.
  return torch::matmul(tenax::copy_to_tensor_parallel(h, *tp_), embedding_->weight.t());
}

torch::Tensor LlamaImpl::loss(const torch::Tensor& logits, const torch::Tensor& targets) {
  // In fp32 also when the logits come from a bf16 forward.
  return tenax::vocab_parallel_cross_entropy(
      logits.to(torch::kFloat32).reshape({-1, logits.size(-1)}), targets.reshape({-1}), *tp_);
}

bool LlamaImpl::replicated_across_tp(const torch::Tensor& p) const {
  return replicated_.count(p.unsafeGetTensorImpl()) > 0;
}

}  // namespace llama
