#pragma once

// Llama-architecture shapes by name, and what follows from a shape without building the model:
// parameter count, FLOPs per token, and memory per rank on a dp x tp x pp mesh.

#include <cstdint>
#include <string>
#include <vector>

namespace llama {

struct LlamaConfig {
  std::string name;
  int64_t vocab = 0;
  int64_t dim = 0;
  int64_t layers = 0;
  int64_t heads = 0;
  int64_t kv_heads = 0;  // grouped-query attention: heads / kv_heads query heads share a K/V head
  int64_t ffn = 0;       // SwiGLU hidden width
  double norm_eps = 1e-5;
  double rope_theta = 10000;
  bool tie_embeddings = false;  // the output projection reuses the embedding table

  int64_t head_dim() const { return dim / heads; }
};

// The preset named `name`: "tiny" (trains in minutes on two CPU cores), "small", and the
// published shapes "llama3-1b" (Llama 3.2 1B), "llama3-8b" and "llama3-70b" (Llama 3.1).
// Throws tenax::ConfigError listing the names when `name` is not one of them.
LlamaConfig preset(const std::string& name);
std::vector<std::string> preset_names();

// Throws tenax::ConfigError naming the field when a shape is inconsistent (heads not dividing
// dim, kv_heads not dividing heads, ...).
void validate(const LlamaConfig& c);

// Trainable parameters of the whole model.
int64_t parameter_count(const LlamaConfig& c);

// Training FLOPs per token at sequence length `seq`: 6·N for the weights (forward and
// backward) plus 12·l·h·q·t for attention scores and values (PaLM's accounting).
double flops_per_token(const LlamaConfig& c, int64_t seq);

// Memory of one rank's model state on a dp x tp x pp mesh, for the most loaded stage, without
// allocating anything. Weights and gradients are fp32 (4 + 4 bytes per parameter) and AdamW
// keeps two fp32 moments (8 bytes), divided by dp when the optimizer state is sharded.
struct MemoryEstimate {
  int64_t params_per_rank = 0;
  int64_t weight_bytes = 0, grad_bytes = 0, optimizer_bytes = 0;
  int64_t total_bytes() const { return weight_bytes + grad_bytes + optimizer_bytes; }
};
MemoryEstimate estimate_memory(const LlamaConfig& c, int dp, int tp, int pp,
                               bool shard_optimizer);

// Layers [first, first + count) of pipeline stage `stage` of `pp`: an even split, the first
// stages taking one more when pp does not divide the layer count.
struct LayerRange {
  int64_t first = 0, count = 0;
};
LayerRange stage_layers(const LlamaConfig& c, int stage, int pp);

// A stage's parameter name in the whole model: "layers.k.rest" of the stage whose first layer
// is `first_layer` is "layers.(first_layer + k).rest"; other names are the same.
std::string whole_model_name(const std::string& stage_name, int64_t first_layer);

}  // namespace llama
