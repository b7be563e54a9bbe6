#include "config.h"

#include <tenax/core/error.h>

#include <algorithm>

namespace llama {

std::vector<std::string> preset_names() {
  return {"tiny", "small", "llama3-1b", "llama3-8b", "llama3-70b"};
}

LlamaConfig preset(const std::string& name) {
  LlamaConfig c;
  c.name = name;
  if (name == "tiny") {
    c.vocab = 256, c.dim = 128, c.layers = 4, c.heads = 4, c.kv_heads = 2, c.ffn = 384;
  } else if (name == "small") {
    c.vocab = 256, c.dim = 512, c.layers = 8, c.heads = 8, c.kv_heads = 4, c.ffn = 1408;
  } else if (name == "llama3-1b") {
    c.vocab = 128256, c.dim = 2048, c.layers = 16, c.heads = 32, c.kv_heads = 8, c.ffn = 8192;
    c.rope_theta = 500000, c.tie_embeddings = true;
  } else if (name == "llama3-8b") {
    c.vocab = 128256, c.dim = 4096, c.layers = 32, c.heads = 32, c.kv_heads = 8, c.ffn = 14336;
    c.rope_theta = 500000;
  } else if (name == "llama3-70b") {
    c.vocab = 128256, c.dim = 8192, c.layers = 80, c.heads = 64, c.kv_heads = 8, c.ffn = 28672;
    c.rope_theta = 500000;
  } else {
    std::string names;
    for (const auto& n : preset_names()) names += (names.empty() ? "" : ", ") + n;
    throw tenax::ConfigError("--preset: unknown preset '" + name + "' (expected one of " +
                             names + ")");
  }
  return c;
}

void validate(const LlamaConfig& c) {
  auto fail = [&](const std::string& what) {
    throw tenax::ConfigError("model '" + c.name + "': " + what);
  };
  if (c.vocab < 1 || c.dim < 1 || c.layers < 1 || c.heads < 1 || c.kv_heads < 1 || c.ffn < 1) {
    fail("every size must be positive");
  }
  if (c.dim % c.heads != 0) {
    fail("heads = " + std::to_string(c.heads) + " does not divide dim = " + std::to_string(c.dim));
  }
  if (c.head_dim() % 2 != 0) fail("rotary embeddings need an even head dimension");
  if (c.heads % c.kv_heads != 0) {
    fail("kv_heads = " + std::to_string(c.kv_heads) + " does not divide heads = " +
         std::to_string(c.heads));
  }
}

namespace {

// Parameters of one decoder layer: attention (q, k, v, o), SwiGLU (gate, up, down), two norms.
int64_t layer_params(const LlamaConfig& c) {
  const int64_t kv_dim = c.kv_heads * c.head_dim();
  return 2 * c.dim * c.dim + 2 * c.dim * kv_dim + 3 * c.dim * c.ffn + 2 * c.dim;
}

}  // namespace

int64_t parameter_count(const LlamaConfig& c) {
  const int64_t embedding = c.vocab * c.dim;
  return embedding * (c.tie_embeddings ? 1 : 2) + c.layers * layer_params(c) + c.dim;
}

double flops_per_token(const LlamaConfig& c, int64_t seq) {
  return 6.0 * static_cast<double>(parameter_count(c)) +
         12.0 * static_cast<double>(c.layers * c.heads * c.head_dim() * seq);
}

LayerRange stage_layers(const LlamaConfig& c, int stage, int pp) {
  const int64_t base = c.layers / pp, extra = c.layers % pp;
  LayerRange r;
  r.count = base + (stage < extra ? 1 : 0);
  r.first = stage * base + std::min<int64_t>(stage, extra);
  return r;
}

std::string whole_model_name(const std::string& name, int64_t first_layer) {
  if (name.rfind("layers.", 0) != 0) return name;
  const size_t dot = name.find('.', 7);
  return "layers." + std::to_string(first_layer + std::stoll(name.substr(7, dot - 7))) +
         name.substr(dot);
}

MemoryEstimate estimate_memory(const LlamaConfig& c, int dp, int tp, int pp, Sharding sharding) {
  // Everything but the norms is split across tp; norms are replicated.
  const int64_t norms = 2 * c.dim;
  const int64_t layer_sharded = (layer_params(c) - norms) / tp + norms;
  const int64_t embedding = c.vocab / tp * c.dim;
  int64_t most = 0, most_root = 0;
  for (int s = 0; s < pp; ++s) {
    int64_t root = 0;
    if (s == 0) root += embedding;
    if (s == pp - 1) root += c.dim + (c.tie_embeddings && pp == 1 ? 0 : embedding);
    const int64_t p = stage_layers(c, s, pp).count * layer_sharded + root;
    if (p > most) most = p, most_root = root;
  }
  MemoryEstimate m;
  m.params_per_rank = most;
  const int64_t held = sharding == Sharding::kFull ? (most + dp - 1) / dp : most;
  m.weight_bytes = 4 * held;
  m.grad_bytes = 4 * held;
  m.optimizer_bytes = 8 * (sharding == Sharding::kNone ? most : (most + dp - 1) / dp);
  if (sharding == Sharding::kFull) m.gathered_bytes = 4 * (2 * layer_sharded + most_root);
  return m;
}

ActivationEstimate estimate_activations(const LlamaConfig& c, int tp, int pp, int64_t micro_batch,
                                        int64_t seq, int64_t in_flight, tenax::Recompute mode,
                                        bool sequence_parallel, int compute_bytes) {
  const int64_t n = micro_batch * seq, d = c.dim, h = c.head_dim();
  const int64_t a = c.heads / tp, k = c.kv_heads / tp, f = c.ffn / tp;
  const int64_t scores = a * seq * seq * micro_batch;
  const int64_t split = sequence_parallel ? tp : 1;
  const int64_t cb = compute_bytes, mixed = compute_bytes < 4;
  const int64_t input = 4 * n * d / split;
  const int64_t softmax = 4 * scores + (mixed ? cb * scores : 0);
  const int64_t plain = 4 * input + cb * (6 * n * a * h + 2 * n * k * h + 4 * n * f) + softmax;
  ActivationEstimate e;
  switch (mode) {
    case tenax::Recompute::kNone:
      e.per_layer_bytes = plain;
      break;
    case tenax::Recompute::kSelective:
      e.per_layer_bytes = plain - softmax;
      e.transient_bytes = 2 * 4 * scores + softmax;
      break;
    case tenax::Recompute::kFull:
      e.per_layer_bytes = input;
      e.transient_bytes = plain;
      break;
  }
  const int64_t layers = stage_layers(c, 0, pp).count;
  const int64_t logits = pp == 1 ? 4 * n * (c.vocab / tp) : 0;
  e.total_bytes = layers * e.per_layer_bytes * in_flight + e.transient_bytes + logits;
  return e;
}

}  // namespace llama
