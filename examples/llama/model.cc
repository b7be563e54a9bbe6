#include "model.h"

#include <torch/torch.h>

#include <tenax/core/error.h>

#include <cmath>

namespace llama {

RMSNormImpl::RMSNormImpl(int64_t dim, double eps) : eps_(eps) {
  weight = register_parameter("weight", torch::ones({dim}));
}

torch::Tensor RMSNormImpl::forward(const torch::Tensor& x) {
  const torch::Tensor w = sp_ ? tenax::copy_to_tensor_parallel(weight, *sp_) : weight;
  return x * torch::rsqrt(x.pow(2).mean(-1, /*keepdim=*/true) + eps_) * w;
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

// Column-parallel products of one input, communicating once for all of them: the sequence
// all-gather under sequence parallelism, else the f operator (one all-reduce in backward).
std::vector<torch::Tensor> column_products(const torch::Tensor& x,
                                           const std::vector<torch::Tensor>& weights,
                                           tenax::Communicator& tp, bool sequence_parallel) {
  if (sequence_parallel) return tenax::sequence_parallel_linears(x, weights, tp);
  const torch::Tensor in = tenax::copy_to_tensor_parallel(x, tp);
  std::vector<torch::Tensor> out;
  for (const auto& w : weights) out.push_back(torch::nn::functional::linear(in, w));
  return out;
}

}  // namespace

AttentionImpl::AttentionImpl(const LlamaConfig& c, std::shared_ptr<tenax::Communicator> tp)
    : tp_(tp),
      heads_(c.heads / tp->size()),
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

void AttentionImpl::set_sequence_parallel(bool on) {
  sequence_parallel_ = on;
  o_->set_sequence_parallel(on);
}

torch::Tensor AttentionImpl::forward(const torch::Tensor& x, const Rope& rope) {
  auto qkv = column_products(x, {q_->weight, k_->weight, v_->weight}, *tp_, sequence_parallel_);
  const int64_t b = qkv[0].size(0), t = qkv[0].size(1);  // the whole sequence
  auto q = qkv[0].view({b, t, heads_, head_dim_}).transpose(1, 2);
  auto k = qkv[1].view({b, t, kv_heads_, head_dim_}).transpose(1, 2);
  auto v = qkv[2].view({b, t, kv_heads_, head_dim_}).transpose(1, 2);
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

FeedForwardImpl::FeedForwardImpl(const LlamaConfig& c, std::shared_ptr<tenax::Communicator> tp)
    : tp_(tp) {
  require_divides("ffn", c.ffn, *tp);
  gate_ = register_module("gate", tenax::ColumnParallelLinear(c.dim, c.ffn, tp, false, false));
  up_ = register_module("up", tenax::ColumnParallelLinear(c.dim, c.ffn, tp, false, false));
  down_ = register_module("down", tenax::RowParallelLinear(c.ffn, c.dim, tp, true, false));
}

void FeedForwardImpl::set_sequence_parallel(bool on) {
  sequence_parallel_ = on;
  down_->set_sequence_parallel(on);
}

torch::Tensor FeedForwardImpl::forward(const torch::Tensor& x) {
  auto gate_up = column_products(x, {gate_->weight, up_->weight}, *tp_, sequence_parallel_);
  return down_(torch::silu(gate_up[0]) * gate_up[1]);
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

void DecoderLayerImpl::set_sequence_parallel(const std::shared_ptr<tenax::Communicator>& tp,
                                             bool on) {
  attention_norm_->set_sequence_parallel(on ? tp : nullptr);
  mlp_norm_->set_sequence_parallel(on ? tp : nullptr);
  attention_->set_sequence_parallel(on);
  mlp_->set_sequence_parallel(on);
}

void DecoderLayerImpl::set_recompute(tenax::Recompute mode) {
  full_recompute_ = mode == tenax::Recompute::kFull;
  attention_->set_selective_recompute(mode == tenax::Recompute::kSelective);
}

LlamaImpl::LlamaImpl(const LlamaConfig& c, int64_t max_seq, std::shared_ptr<tenax::Communicator> tp,
                     int pp_rank, int pp_size, int chunks)
    : c_(c),
      tp_(tp),
      pp_rank_(pp_rank),
      pp_size_(pp_size),
      rope_(c.head_dim(), max_seq, c.rope_theta) {
  validate(c);
  require_divides("vocab", c.vocab, *tp);
  if (pp_size * chunks > c.layers) {
    throw tenax::ConfigError("--pp " + std::to_string(pp_size) +
                             (chunks > 1 ? " x --virtual-stages " + std::to_string(chunks) : "") +
                             " exceeds the " + std::to_string(c.layers) + " layers of preset " +
                             c.name);
  }
  if (c.tie_embeddings && pp_size > 1) {
    throw tenax::ConfigError("preset " + c.name + " ties its embeddings: use --pp 1");
  }
  // Draw every weight in model order; keep this rank's chunks' (virtual stages j·pp + rank).
  std::vector<LayerRange> mine;
  for (int j = 0; j < chunks; ++j) {
    mine.push_back(stage_layers(c, j * pp_size + pp_rank, pp_size * chunks));
  }
  auto embedding = tenax::VocabParallelEmbedding(c.vocab, c.dim, tp);
  if (first_stage()) embedding_ = register_module("embedding", embedding);
  chunk_layers_.resize(chunks);
  for (int64_t l = 0; l < c.layers; ++l) {
    DecoderLayer layer(c, tp);
    for (int j = 0; j < chunks; ++j) {
      if (l < mine[j].first || l >= mine[j].first + mine[j].count) continue;
      if (chunk_layers_[j].count == 0) chunk_layers_[j].first = layers_->size();
      ++chunk_layers_[j].count;
      layer_ids_.push_back(l);
      layers_->push_back(layer);
    }
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

void LlamaImpl::set_sequence_parallel(bool on) {
  if (tp_->size() == 1) return;  // nothing is split: the plain model
  sequence_parallel_ = on;
  if (embedding_) embedding_->set_sequence_parallel(on);
  for (const auto& layer : *layers_) layer->as<DecoderLayerImpl>()->set_sequence_parallel(tp_, on);
  if (norm_) norm_->set_sequence_parallel(on ? tp_ : nullptr);
  if (output_) output_->set_sequence_parallel(on);
}

torch::Tensor LlamaImpl::forward(const torch::Tensor& x) {
  if (chunks() != 1) {
    throw tenax::ConfigError("Llama: " + std::to_string(chunks()) +
                             " chunks on this rank: run each with forward_chunk");
  }
  return forward_chunk(0, x);
}

std::string LlamaImpl::whole_name(const std::string& name) const {
  if (name.rfind("layers.", 0) != 0) return name;
  const size_t dot = name.find('.', 7);
  return "layers." + std::to_string(layer_ids_.at(std::stoull(name.substr(7, dot - 7)))) +
         name.substr(dot);
}

torch::Tensor LlamaImpl::forward_chunk(int chunk, const torch::Tensor& x) {
  const LayerRange& range = chunk_layers_.at(chunk);
  torch::Tensor h = chunk == 0 && first_stage() ? embedding_(x) : x;
  for (int64_t k = range.first; k < range.first + range.count; ++k) {
    auto* layer = layers_[k]->as<DecoderLayerImpl>();
    if (runner_) {
      h = runner_(static_cast<size_t>(k), [&] { return layer->forward(h, rope_); });
    } else {
      h = layer->forward(h, rope_);
    }
  }
  if (chunk != chunks() - 1 || !last_stage()) return h;
  h = norm_(h);
  if (output_) return output_(h);
  // Tied: this rank's vocabulary rows of the embedding table are its slice of the output.
  return column_products(h, {embedding_->weight}, *tp_, sequence_parallel_)[0];
}

std::vector<std::shared_ptr<torch::nn::Module>> LlamaImpl::layer_modules() const {
  std::vector<std::shared_ptr<torch::nn::Module>> out;
  for (const auto& layer : *layers_) out.push_back(layer);
  return out;
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
