#pragma once

// Hugging Face's Llama (transformers' LlamaForCausalLM) as this model: the config.json fields
// that make a LlamaConfig, the parameter names, and the weights of a save_pretrained directory
// (safetensors). The two models compute the same function: HF stores q and k already in the
// rotate-half layout this model's Rope uses, so the weights map one to one, without permutation.
//
//   this model                          Hugging Face
//   embedding.weight                    model.embed_tokens.weight
//   layers.L.attention_norm.weight      model.layers.L.input_layernorm.weight
//   layers.L.attention.{q,k,v,o}.weight model.layers.L.self_attn.{q,k,v,o}_proj.weight
//   layers.L.mlp_norm.weight            model.layers.L.post_attention_layernorm.weight
//   layers.L.mlp.{gate,up,down}.weight  model.layers.L.mlp.{gate,up,down}_proj.weight
//   norm.weight                         model.norm.weight
//   output.weight                       lm_head.weight (absent with tie_word_embeddings)
//
// Thread rules: free functions without shared state, callable from any thread. The weights'
// loading is in hf_weights.h.

#include <cstdint>
#include <string>
#include <vector>

#include "config.h"

namespace llama {

// The shape in the text of a config.json (`what` names it in errors). Throws tenax::ConfigError
// naming the field for a config this model cannot express: another model_type, an activation
// other than silu, biases, dropout, a head_dim other than hidden_size / num_attention_heads,
// rotary scaling of any kind but "default"; and for a missing or non-positive size.
LlamaConfig config_from_hf_json(const std::string& text, const std::string& what);
// The same for DIR/config.json; throws ConfigError naming the file when it cannot be read.
LlamaConfig config_from_hf(const std::string& dir);

// The config.json of `c` as transformers writes it for LlamaForCausalLM, fp32 weights, with
// max_position_embeddings = `max_positions`.
std::string hf_config_json(const LlamaConfig& c, int64_t max_positions);

// Hugging Face's name of the whole-model parameter `name` ("layers.3.attention.q.weight" ->
// "model.layers.3.self_attn.q_proj.weight"). Throws ConfigError for a name it does not know.
std::string hf_name(const std::string& name);
// Every parameter name of the whole model `c`, in model order.
std::vector<std::string> parameter_names(const LlamaConfig& c);

// What a checkpoint records so that `tenax-ckpt export --format hf` can write a directory
// transformers loads: {"config": <config.json>, "tensors": {"<prefix><name>": "<HF name>"}}.
// Saved as the StateDict blob kHfExportBlob.
inline constexpr char kHfExportBlob[] = "export.hf";
std::string hf_export_description(const LlamaConfig& c, int64_t max_positions,
                                  const std::string& prefix);

}  // namespace llama
