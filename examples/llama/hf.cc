#include "hf.h"

#include <tenax/core/error.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

namespace llama {

namespace {

using nlohmann::json;

[[noreturn]] void refuse(const std::string& what, const std::string& field, const std::string& why) {
  throw tenax::ConfigError(what + ": field '" + field + "' " + why);
}

int64_t size_field(const json& j, const std::string& what, const char* field) {
  auto it = j.find(field);
  if (it == j.end() || it->is_null()) refuse(what, field, "is missing");
  if (!it->is_number_integer() || it->get<int64_t>() < 1) {
    refuse(what, field, "is " + it->dump() + ": expected a positive integer");
  }
  return it->get<int64_t>();
}

// `field` must be absent, null, or equal to `expected`.
void require(const json& j, const std::string& what, const char* field, const json& expected,
             const std::string& why) {
  auto it = j.find(field);
  if (it == j.end() || it->is_null() || *it == expected) return;
  refuse(what, field, "is " + it->dump() + ": " + why);
}

// Rotary embeddings: transformers 5 writes rope_parameters {rope_type, rope_theta}; 4.x wrote
// rope_theta and rope_scaling ({"rope_type" or "type": ...}, null for plain RoPE).
double rope_theta(const json& j, const std::string& what) {
  double theta = 10000;
  auto plain = [&](const json& params, const std::string& field) {
    if (params.is_null()) return;
    if (!params.is_object()) refuse(what, field, "is " + params.dump() + ": expected an object");
    for (const char* key : {"rope_type", "type"}) {
      auto t = params.find(key);
      if (t != params.end() && !t->is_null() && *t != "default") {
        refuse(what, field + "." + key,
               "is " + t->dump() + ": only \"default\" rotary embeddings are supported");
      }
    }
    if (auto t = params.find("rope_theta"); t != params.end() && t->is_number()) {
      theta = t->get<double>();
    }
  };
  if (auto it = j.find("rope_theta"); it != j.end() && it->is_number()) theta = it->get<double>();
  if (auto it = j.find("rope_scaling"); it != j.end()) plain(*it, "rope_scaling");
  if (auto it = j.find("rope_parameters"); it != j.end()) plain(*it, "rope_parameters");
  if (!(theta > 0)) refuse(what, "rope_theta", "is " + std::to_string(theta) + ": expected > 0");
  return theta;
}

}  // namespace

LlamaConfig config_from_hf_json(const std::string& text, const std::string& what) {
  json j;
  try {
    j = json::parse(text);
  } catch (const json::exception& e) {
    throw tenax::ConfigError(what + ": not JSON (" + e.what() + ")");
  }
  if (!j.is_object()) throw tenax::ConfigError(what + ": expected a JSON object");
  require(j, what, "model_type", "llama", "only Llama models (model_type \"llama\") load");
  require(j, what, "hidden_act", "silu", "the MLP is SwiGLU (silu)");
  require(j, what, "attention_bias", false, "the attention projections have no bias");
  require(j, what, "mlp_bias", false, "the MLP projections have no bias");
  require(j, what, "attention_dropout", 0.0, "the model has no dropout");
  LlamaConfig c;
  c.vocab = size_field(j, what, "vocab_size");
  c.dim = size_field(j, what, "hidden_size");
  c.ffn = size_field(j, what, "intermediate_size");
  c.layers = size_field(j, what, "num_hidden_layers");
  c.heads = size_field(j, what, "num_attention_heads");
  c.kv_heads = j.contains("num_key_value_heads") && !j["num_key_value_heads"].is_null()
                   ? size_field(j, what, "num_key_value_heads")
                   : c.heads;
  if (c.dim % c.heads == 0) {
    require(j, what, "head_dim", c.dim / c.heads,
            "the head width must be hidden_size / num_attention_heads = " +
                std::to_string(c.dim / c.heads));
  }
  if (auto it = j.find("rms_norm_eps"); it != j.end() && it->is_number()) {
    c.norm_eps = it->get<double>();
  }
  c.rope_theta = rope_theta(j, what);
  c.tie_embeddings = j.value("tie_word_embeddings", false);
  c.name = "hf";
  validate(c);
  return c;
}

LlamaConfig config_from_hf(const std::string& dir) {
  const std::string path = dir + "/config.json";
  std::ifstream in(path);
  if (!in) throw tenax::ConfigError("--init-from-hf: cannot read " + path);
  std::stringstream text;
  text << in.rdbuf();
  LlamaConfig c = config_from_hf_json(text.str(), path);
  c.name = "hf:" + dir;
  return c;
}

std::string hf_config_json(const LlamaConfig& c, int64_t max_positions) {
  json j = {{"architectures", {"LlamaForCausalLM"}},
            {"model_type", "llama"},
            {"vocab_size", c.vocab},
            {"hidden_size", c.dim},
            {"intermediate_size", c.ffn},
            {"num_hidden_layers", c.layers},
            {"num_attention_heads", c.heads},
            {"num_key_value_heads", c.kv_heads},
            {"head_dim", c.head_dim()},
            {"hidden_act", "silu"},
            {"max_position_embeddings", max_positions},
            {"rms_norm_eps", c.norm_eps},
            {"rope_parameters", {{"rope_type", "default"}, {"rope_theta", c.rope_theta}}},
            {"attention_bias", false},
            {"attention_dropout", 0.0},
            {"mlp_bias", false},
            {"tie_word_embeddings", c.tie_embeddings},
            {"dtype", "float32"}};
  return j.dump(2);
}

std::string hf_name(const std::string& name) {
  static const std::pair<const char*, const char*> kWhole[] = {
      {"embedding.weight", "model.embed_tokens.weight"},
      {"norm.weight", "model.norm.weight"},
      {"output.weight", "lm_head.weight"}};
  for (const auto& [ours, theirs] : kWhole) {
    if (name == ours) return theirs;
  }
  static const std::pair<const char*, const char*> kLayer[] = {
      {"attention_norm.weight", "input_layernorm.weight"},
      {"attention.q.weight", "self_attn.q_proj.weight"},
      {"attention.k.weight", "self_attn.k_proj.weight"},
      {"attention.v.weight", "self_attn.v_proj.weight"},
      {"attention.o.weight", "self_attn.o_proj.weight"},
      {"mlp_norm.weight", "post_attention_layernorm.weight"},
      {"mlp.gate.weight", "mlp.gate_proj.weight"},
      {"mlp.up.weight", "mlp.up_proj.weight"},
      {"mlp.down.weight", "mlp.down_proj.weight"}};
  if (name.rfind("layers.", 0) == 0) {
    const size_t dot = name.find('.', 7);
    if (dot != std::string::npos && dot > 7 &&
        name.find_first_not_of("0123456789", 7) == dot) {
      const std::string rest = name.substr(dot + 1);
      for (const auto& [ours, theirs] : kLayer) {
        if (rest == ours) return "model." + name.substr(0, dot + 1) + theirs;
      }
    }
  }
  throw tenax::ConfigError("parameter '" + name + "' has no Hugging Face Llama name");
}

std::vector<std::string> parameter_names(const LlamaConfig& c) {
  std::vector<std::string> names = {"embedding.weight"};
  for (int64_t l = 0; l < c.layers; ++l) {
    const std::string p = "layers." + std::to_string(l) + ".";
    for (const char* rest : {"attention_norm.weight", "attention.q.weight", "attention.k.weight",
                             "attention.v.weight", "attention.o.weight", "mlp_norm.weight",
                             "mlp.gate.weight", "mlp.up.weight", "mlp.down.weight"}) {
      names.push_back(p + rest);
    }
  }
  names.push_back("norm.weight");
  if (!c.tie_embeddings) names.push_back("output.weight");
  return names;
}

std::string hf_export_description(const LlamaConfig& c, int64_t max_positions,
                                  const std::string& prefix) {
  json tensors = json::object();
  for (const auto& n : parameter_names(c)) tensors[prefix + n] = hf_name(n);
  return json{{"config", json::parse(hf_config_json(c, max_positions))}, {"tensors", tensors}}
      .dump();
}

}  // namespace llama
