// Hugging Face's Llama as the reference model: transformers' LlamaForCausalLM of the tiny and
// small presets' shapes with random weights (tests/llama/hf_reference.py, from the project's
// Python environment; nothing downloaded), loaded by llama_train on one rank, at tp 2 and at
// pp 2, and a trained tenax checkpoint exported back with tenax-ckpt for from_pretrained.

#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <regex>
#include <set>
#include <vector>

#include "config.h"
#include "hf.h"
#include "support/process.h"
#include "tenax/core/error.h"

using tenax::testing::run_command;

namespace {

namespace fs = std::filesystem;

constexpr int kWindows = 8, kSeq = 32;  // the reference's tokens: 8 windows of 32 + 1

// What `hf_reference.py make` wrote, and its loss.
struct Reference {
  std::string dir, hf, tokens, logits;
  double loss = 0;
};

double parse_loss(const std::string& out, const std::string& pattern) {
  std::smatch m;
  if (!std::regex_search(out, m, std::regex(pattern))) return std::nan("");
  return std::stod(m[1]);
}

std::vector<float> read_floats(const std::string& path) {
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  std::vector<float> v(static_cast<size_t>(in.tellg()) / sizeof(float));
  in.seekg(0);
  in.read(reinterpret_cast<char*>(v.data()), static_cast<std::streamsize>(v.size() * sizeof(float)));
  return v;
}

class HuggingFaceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = fs::temp_directory_path() / ("tenax-hf-" + std::to_string(::getpid()));
    fs::create_directories(root_);
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(root_, ec);
    for (const auto& run : runs_) {  // the memory tier's regions of the runs this test made
      for (const auto& e : fs::directory_iterator("/dev/shm", ec)) {
        if (e.path().filename().string().rfind("tenax-" + run + "-", 0) == 0) fs::remove(e, ec);
      }
    }
  }

  Reference make(const std::string& preset) {
    Reference r;
    r.dir = (root_ / preset).string();
    fs::create_directories(r.dir);
    auto out = run_command({TENAX_PYTHON, HF_REFERENCE, "make", "--preset", preset, "--out", r.dir,
                            "--windows", std::to_string(kWindows), "--seq-len",
                            std::to_string(kSeq)},
                           {}, std::chrono::seconds(180));
    EXPECT_EQ(out.exit_code, 0) << out.output;
    r.hf = r.dir + "/hf", r.tokens = r.dir + "/tokens.bin", r.logits = r.dir + "/logits.f32";
    r.loss = parse_loss(out.output, R"(loss ([0-9.]+))");
    return r;
  }

  // llama_train --eval-only on the reference's tokens (every window once), `ranks` processes
  // under tenaxrun; the validation loss it prints.
  double tenax_loss(const Reference& r, int ranks, std::vector<std::string> flags) {
    std::vector<std::string> argv = {TENAXRUN, "--nproc-per-node", std::to_string(ranks),
                                     LLAMA_TRAIN, "--data", r.tokens, "--val-data", r.tokens,
                                     "--seq-len", std::to_string(kSeq), "--micro-batch", "4",
                                     "--global-batch", "8", "--eval-batches", "2", "--eval-only"};
    argv.insert(argv.end(), flags.begin(), flags.end());
    auto out = run_command(argv, {}, std::chrono::seconds(180));
    EXPECT_EQ(out.exit_code, 0) << out.output;
    const double loss = parse_loss(out.output, R"(validation loss ([0-9.]+) over 256 tokens)");
    EXPECT_FALSE(std::isnan(loss)) << out.output;
    return loss;
  }

  fs::path root_;
  std::vector<std::string> runs_;
};

TEST_F(HuggingFaceTest, TinyAndSmallPresetsLoadWithTheirLogitsWithin1e4AndTheLossEqual) {
  for (const std::string preset : {"tiny", "small"}) {
    SCOPED_TRACE(preset);
    Reference r = make(preset);
    ASSERT_FALSE(std::isnan(r.loss));
    const llama::LlamaConfig c = llama::config_from_hf(r.hf), p = llama::preset(preset);
    EXPECT_EQ(std::vector<int64_t>({c.vocab, c.dim, c.layers, c.heads, c.kv_heads, c.ffn}),
              std::vector<int64_t>({p.vocab, p.dim, p.layers, p.heads, p.kv_heads, p.ffn}));
    EXPECT_EQ(c.rope_theta, p.rope_theta);
    EXPECT_EQ(c.norm_eps, p.norm_eps);

    const std::string ours = r.dir + "/tenax_logits.f32";
    auto out = run_command({LLAMA_WORKER, "hf", r.hf, r.tokens, std::to_string(kSeq), ours}, {},
                           std::chrono::seconds(180));
    ASSERT_EQ(out.exit_code, 0) << out.output;
    const std::vector<float> theirs = read_floats(r.logits), mine = read_floats(ours);
    ASSERT_EQ(mine.size(), size_t(kWindows) * kSeq * p.vocab);
    ASSERT_EQ(mine.size(), theirs.size());
    double diff = 0, scale = 0;
    for (size_t i = 0; i < mine.size(); ++i) {
      diff = std::max(diff, double(std::abs(mine[i] - theirs[i])));
      scale = std::max(scale, double(std::abs(theirs[i])));
    }
    std::printf("%s: logits up to %.3g, differ by at most %.3g\n", preset.c_str(), scale, diff);
    EXPECT_GT(scale, 1.0);  // logits far from zero: a misplaced weight would show
    EXPECT_LE(diff, 1e-4);
    const double loss = parse_loss(out.output, R"(loss ([0-9.]+))");
    EXPECT_NEAR(loss, r.loss, 1e-6 * r.loss) << out.output;
  }
}

TEST_F(HuggingFaceTest, LoadsAtTensorAndPipelineParallelTwoShardTheModelAndKeepItsLoss) {
  Reference r = make("tiny");
  ASSERT_FALSE(std::isnan(r.loss));
  const double one = tenax_loss(r, 1, {"--init-from-hf", r.hf});
  const double tp = tenax_loss(r, 2, {"--init-from-hf", r.hf, "--tp", "2"});
  const double pp = tenax_loss(r, 2, {"--init-from-hf", r.hf, "--pp", "2"});
  std::printf("loss: transformers %.8f, tenax one rank %.8f, tp 2 %.8f, pp 2 %.8f\n", r.loss, one,
              tp, pp);
  EXPECT_NEAR(one, r.loss, 1e-5 * r.loss);
  EXPECT_NEAR(tp, r.loss, 1e-5 * r.loss);
  EXPECT_NEAR(pp, r.loss, 1e-5 * r.loss);
  // The seed's weights instead: another loss, so the ones above came from the directory.
  const double seeded = tenax_loss(r, 1, {"--preset", "tiny"});
  EXPECT_GT(std::abs(seeded - r.loss), 0.1);
}

TEST_F(HuggingFaceTest, ATrainedCheckpointExportsToADirectoryTransformersLoadsWithTheSameLoss) {
  Reference r = make("tiny");
  ASSERT_FALSE(std::isnan(r.loss));
  const std::string run = "hf-export-" + std::to_string(::getpid());
  runs_.push_back(run);
  const std::string durable = r.dir + "/durable", exported = r.dir + "/exported";
  const std::vector<std::string> ckpt = {"--ckpt-every", "3", "--ckpt-persist-every", "1",
                                         "--ckpt-durable", durable, "--ckpt-run", run};
  // Three steps at tp 2 from the Hugging Face weights, saved; then the step-3 weights evaluated
  // by one process (resharded from the checkpoint).
  std::vector<std::string> train = {TENAXRUN, "--nproc-per-node", "2", LLAMA_TRAIN,
                                    "--init-from-hf", r.hf, "--tp", "2", "--data", r.tokens,
                                    "--seq-len", std::to_string(kSeq), "--micro-batch", "4",
                                    "--global-batch", "8", "--steps", "3", "--warmup", "1",
                                    "--eval-interval", "0"};
  train.insert(train.end(), ckpt.begin(), ckpt.end());
  auto trained = run_command(train, {}, std::chrono::seconds(180));
  ASSERT_EQ(trained.exit_code, 0) << trained.output;
  std::vector<std::string> eval = {"--preset", "tiny", "--resume"};
  eval.insert(eval.end(), ckpt.begin(), ckpt.end());
  const double ours = tenax_loss(r, 1, eval);

  auto out = run_command({TENAX_CKPT, "export", "--run", run, "--durable", durable, "--format",
                          "hf", "--out", exported});
  ASSERT_EQ(out.exit_code, 0) << out.output;
  const llama::LlamaConfig c = llama::config_from_hf(exported), p = llama::preset("tiny");
  EXPECT_EQ(std::vector<int64_t>({c.vocab, c.dim, c.layers, c.heads, c.kv_heads, c.ffn}),
            std::vector<int64_t>({p.vocab, p.dim, p.layers, p.heads, p.kv_heads, p.ffn}));
  auto hf = run_command({TENAX_PYTHON, HF_REFERENCE, "loss", "--model", exported, "--tokens",
                         r.tokens, "--seq-len", std::to_string(kSeq)},
                        {}, std::chrono::seconds(180));
  ASSERT_EQ(hf.exit_code, 0) << hf.output;
  const double theirs = parse_loss(hf.output, R"(loss ([0-9.]+))");
  std::printf("loss of the step-3 weights: tenax %.8f, transformers on the export %.8f "
              "(%.8f before training)\n", ours, theirs, r.loss);
  EXPECT_NEAR(theirs, ours, 1e-5 * ours) << hf.output;
  EXPECT_GT(std::abs(ours - r.loss), 1e-3);  // trained: not the weights it started from

  // A format tenax-ckpt does not write is a usage error naming it.
  auto plain = run_command({TENAX_CKPT, "export", "--run", run, "--durable", durable, "--format",
                            "onnx", "--out", exported});
  EXPECT_EQ(plain.exit_code, 2);
  EXPECT_NE(plain.output.find("--format onnx"), std::string::npos) << plain.output;
}

TEST(HuggingFaceConfigTest, AConfigTenaxCannotExpressIsRefusedNamingTheField) {
  const std::string base =
      R"("model_type": "llama", "vocab_size": 256, "hidden_size": 128, "intermediate_size": 384,
         "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2)";
  auto refused = [&](const std::string& extra) -> std::string {
    try {
      llama::config_from_hf_json("{" + base + extra + "}", "config.json");
    } catch (const tenax::ConfigError& e) {
      return e.what();
    }
    return "accepted";
  };
  EXPECT_EQ(refused(""), "accepted");
  EXPECT_EQ(refused(R"(, "rope_scaling": null, "rope_theta": 500000.0)"), "accepted");
  EXPECT_EQ(refused(R"(, "rope_parameters": {"rope_type": "default", "rope_theta": 1e4})"),
            "accepted");
  EXPECT_NE(refused(R"(, "rope_scaling": {"rope_type": "llama3", "factor": 32.0})")
                .find("'rope_scaling.rope_type' is \"llama3\""),
            std::string::npos);
  EXPECT_NE(refused(R"(, "rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4})")
                .find("'rope_parameters.rope_type'"),
            std::string::npos);
  EXPECT_NE(refused(R"(, "rope_scaling": {"type": "linear", "factor": 2.0})")
                .find("'rope_scaling.type'"),
            std::string::npos);
  EXPECT_NE(refused(R"(, "attention_bias": true)").find("'attention_bias'"), std::string::npos);
  EXPECT_NE(refused(R"(, "hidden_act": "gelu")").find("'hidden_act'"), std::string::npos);
  EXPECT_NE(refused(R"(, "head_dim": 64)").find("'head_dim' is 64"), std::string::npos);
}

TEST(HuggingFaceConfigTest, LlamaTrainRefusesALlama3ScaledRopeNamingTheFieldBeforeAnyWork) {
  const fs::path dir = fs::temp_directory_path() / ("tenax-hf-rope-" + std::to_string(::getpid()));
  fs::create_directories(dir);
  std::ofstream(dir / "config.json") << R"({"model_type": "llama", "vocab_size": 128256,
      "hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16,
      "num_attention_heads": 32, "num_key_value_heads": 8, "rope_theta": 500000.0,
      "rope_scaling": {"rope_type": "llama3", "factor": 32.0}, "tie_word_embeddings": true})";
  auto out = run_command({LLAMA_TRAIN, "--init-from-hf", dir.string()});
  fs::remove_all(dir);
  EXPECT_EQ(out.exit_code, 2) << out.output;
  EXPECT_NE(out.output.find("config.json: field 'rope_scaling.rope_type' is \"llama3\""),
            std::string::npos)
      << out.output;
}

TEST(HuggingFaceConfigTest, AMissingSizeOrAnotherModelTypeIsNamed) {
  auto message = [](const std::string& text) -> std::string {
    try {
      llama::config_from_hf_json(text, "x/config.json");
    } catch (const tenax::ConfigError& e) {
      return e.what();
    }
    return "accepted";
  };
  EXPECT_NE(message(R"({"model_type": "mistral"})").find("'model_type'"), std::string::npos);
  EXPECT_NE(message(R"({"model_type": "llama", "vocab_size": 256})").find("'hidden_size' is missing"),
            std::string::npos);
  EXPECT_NE(message("not json").find("x/config.json: not JSON"), std::string::npos);
}

TEST(HuggingFaceConfigTest, TheNamesMapOneToOneAndAnUnknownNameIsRefused) {
  const llama::LlamaConfig tiny = llama::preset("tiny");
  std::set<std::string> seen;
  for (const auto& n : llama::parameter_names(tiny)) seen.insert(llama::hf_name(n));
  EXPECT_EQ(seen.size(), llama::parameter_names(tiny).size());
  EXPECT_EQ(seen.size(), 2u + 4u * 9u + 1u);
  EXPECT_EQ(llama::hf_name("layers.3.attention.k.weight"), "model.layers.3.self_attn.k_proj.weight");
  EXPECT_EQ(llama::hf_name("layers.0.mlp_norm.weight"),
            "model.layers.0.post_attention_layernorm.weight");
  EXPECT_THROW(llama::hf_name("layers.x.mlp.up.weight"), tenax::ConfigError);
  EXPECT_THROW(llama::hf_name("rope.cos"), tenax::ConfigError);
  // The exported config reads back as the same shape.
  const llama::LlamaConfig back = llama::config_from_hf_json(llama::hf_config_json(tiny, 128), "x");
  EXPECT_EQ(back.kv_heads, tiny.kv_heads);
  EXPECT_EQ(back.ffn, tiny.ffn);
  EXPECT_EQ(back.tie_embeddings, tiny.tie_embeddings);
}

}  // namespace
