#pragma once

// Llama-architecture shapes by name, and what follows from a shape without building the model:
// parameter count, FLOPs per token, and memory per rank on a dp x tp x pp mesh.

#include <tenax/parallel/recompute_mode.h>

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
// keeps two fp32 moments (8 bytes), divided by dp when the optimizer state is sharded. Fully
// sharded (ZeRO-3), weights and gradients are divided by dp too, and the step gathers whole
// fp32 weights: two decoder layers (one computing, one prefetched) and the stage's other
// parameters (embedding, final norm, output).
enum class Sharding { kNone, kOptimizer, kFull };
struct MemoryEstimate {
  int64_t params_per_rank = 0;
  int64_t weight_bytes = 0, grad_bytes = 0, optimizer_bytes = 0;
  int64_t gathered_bytes = 0;  // fully sharded: the whole weights gathered during a step
  int64_t total_bytes() const {
    return weight_bytes + grad_bytes + optimizer_bytes + gathered_bytes;
  }
};
MemoryEstimate estimate_memory(const LlamaConfig& c, int dp, int tp, int pp, Sharding sharding);

// Activations of one rank on the most loaded pipeline stage (the first), as this model's
// operations keep them for backward: per decoder layer and micro-batch of b sequences of s
// tokens (n = b·s), with d the width, a and k the query and K/V heads on the rank, h the head
// width and f the feed-forward width on the rank, in elements,
//   none       4·n·d (norms, fp32) + 6·n·a·h + 2·n·k·h (attention) + a·s²·b (softmax, fp32)
//              + 4·n·f (MLP)
//   selective  the same without a·s²·b, plus one core attention recomputed at a time
//              (scores, masked scores, softmax: 3·a·s²·b)
//   full       n·d (the layer's input), plus one whole layer recomputed at a time (none's set)
// times the micro-batches in flight on the stage, plus the output logits n·vocab/tp (last
// stage; counted when pp = 1). The projections' outputs (attention and MLP terms, and a copy of
// the softmax for its product with v) take `compute_bytes` each (2 under bf16 or fp16
// autocast), the rest 4. Sequence parallelism divides the norm terms and the layer input by tp.
struct ActivationEstimate {
  int64_t per_layer_bytes = 0;  // kept per layer and micro-batch
  int64_t transient_bytes = 0;  // one recomputation's tensors during backward
  int64_t total_bytes = 0;      // the stage's peak
};
ActivationEstimate estimate_activations(const LlamaConfig& c, int tp, int pp, int64_t micro_batch,
                                        int64_t seq, int64_t in_flight, tenax::Recompute mode,
                                        bool sequence_parallel = false, int compute_bytes = 4);

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
