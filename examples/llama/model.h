#pragma once

// A Llama-architecture decoder as LibTorch modules: token embedding, RMSNorm, rotary position
// embeddings, grouped-query causal self-attention, SwiGLU MLP, final norm, output projection.
//
// Tensor parallelism: every projection is one of tenax's tensor-parallel layers (q/k/v and
// gate/up column-parallel, o and down row-parallel, the embedding and the output projection
// split by vocabulary), so each rank holds heads/tp query heads, kv_heads/tp K/V heads and
// ffn/tp of the MLP. Pipeline parallelism: a model object is one stage and holds only that
// stage's layers (the embedding on the first, the final norm and output on the last).
//
// Every rank draws the weights of the whole model from the RNG in the same order (building
// and dropping what it does not keep), so with the same seed a model on any mesh holds exact
// shards of the one-process model.

#include <tenax/comm/communicator.h>
#include <tenax/parallel/recompute.h>
#include <tenax/parallel/tensor_parallel.h>
#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/pimpl.h>

#include <functional>
#include <memory>
#include <string>
#include <unordered_set>
#include <vector>

#include "config.h"

namespace llama {

class RMSNormImpl : public torch::nn::Module {
 public:
  RMSNormImpl(int64_t dim, double eps);
  torch::Tensor forward(const torch::Tensor& x);
  // Under sequence parallelism each tp rank normalises its own positions: the weight's
  // gradient is the sum of the ranks' parts, all-reduced over `tp` in backward. Null: off.
  void set_sequence_parallel(std::shared_ptr<tenax::Communicator> tp) { sp_ = std::move(tp); }
  torch::Tensor weight;

 private:
  double eps_;
  std::shared_ptr<tenax::Communicator> sp_;
};
TORCH_MODULE(RMSNorm);

// cos and sin tables of the rotary embedding for positions [0, max_seq).
struct Rope {
  Rope(int64_t head_dim, int64_t max_seq, double theta);
  // x: [batch, heads, seq, head_dim]; rotates pairs (i, i + head_dim/2) by position.
  torch::Tensor apply(const torch::Tensor& x) const;
  torch::Tensor cos, sin;
};

class AttentionImpl : public torch::nn::Module {
 public:
  AttentionImpl(const LlamaConfig& c, std::shared_ptr<tenax::Communicator> tp);
  torch::Tensor forward(const torch::Tensor& x, const Rope& rope);
  // Recompute the core attention (scores, softmax, weighted sum) in backward instead of
  // keeping its [batch, heads, seq, seq] tensors.
  void set_selective_recompute(bool on) { selective_ = on; }
  // Input and output are this rank's sequence chunk [batch, seq/tp, dim].
  void set_sequence_parallel(bool on);

 private:
  std::shared_ptr<tenax::Communicator> tp_;
  int64_t heads_, kv_heads_, head_dim_;  // this rank's heads
  bool selective_ = false, sequence_parallel_ = false;
  tenax::ColumnParallelLinear q_{nullptr}, k_{nullptr}, v_{nullptr};
  tenax::RowParallelLinear o_{nullptr};
};
TORCH_MODULE(Attention);

class FeedForwardImpl : public torch::nn::Module {
 public:
  FeedForwardImpl(const LlamaConfig& c, std::shared_ptr<tenax::Communicator> tp);
  torch::Tensor forward(const torch::Tensor& x);
  void set_sequence_parallel(bool on);  // as Attention's

 private:
  std::shared_ptr<tenax::Communicator> tp_;
  bool sequence_parallel_ = false;
  tenax::ColumnParallelLinear gate_{nullptr}, up_{nullptr};
  tenax::RowParallelLinear down_{nullptr};
};
TORCH_MODULE(FeedForward);

class DecoderLayerImpl : public torch::nn::Module {
 public:
  DecoderLayerImpl(const LlamaConfig& c, std::shared_ptr<tenax::Communicator> tp);
  torch::Tensor forward(const torch::Tensor& x, const Rope& rope);
  void set_recompute(tenax::Recompute mode);
  void set_sequence_parallel(const std::shared_ptr<tenax::Communicator>& tp, bool on);

 private:
  torch::Tensor body(const torch::Tensor& x, const Rope& rope);
  bool full_recompute_ = false;
  RMSNorm attention_norm_{nullptr}, mlp_norm_{nullptr};
  Attention attention_{nullptr};
  FeedForward mlp_{nullptr};
};
TORCH_MODULE(DecoderLayer);

class LlamaImpl : public torch::nn::Module {
 public:
  // Stage `pp_rank` of `pp_size` of the model, sharded over `tp`. Throws tenax::ConfigError
  // when tp does not divide heads, kv_heads, ffn or vocab, when there are more stages than
  // layers, or for tied embeddings with pp > 1.
  // With `chunks` = v > 1 (interleaved pipeline), the rank holds v model chunks: chunk j is
  // virtual stage j·pp_size + pp_rank of v·pp_size, each an even share of the layers.
  LlamaImpl(const LlamaConfig& c, int64_t max_seq, std::shared_ptr<tenax::Communicator> tp,
            int pp_rank = 0, int pp_size = 1, int chunks = 1);

  // First stage: token ids [batch, seq] (int64); other stages: hidden states [batch, seq, dim].
  // Last stage: this rank's vocabulary slice of the logits [batch, seq, vocab/tp]; other
  // stages: hidden states. One chunk only.
  torch::Tensor forward(const torch::Tensor& x);
  // Chunk `chunk` of this rank: the embedding first on virtual stage 0, the final norm and
  // output after on the last.
  torch::Tensor forward_chunk(int chunk, const torch::Tensor& x);
  int chunks() const { return static_cast<int>(chunk_layers_.size()); }
  // A parameter's name in the whole model: "layers.k.rest" (k counting this rank's layers)
  // becomes "layers.<the layer's index in the model>.rest"; other names are the same.
  std::string whole_name(const std::string& name) const;
  // Mean next-token cross-entropy of the last stage's logits against targets [batch, seq].
  torch::Tensor loss(const torch::Tensor& logits, const torch::Tensor& targets);

  bool first_stage() const { return pp_rank_ == 0; }
  bool last_stage() const { return pp_rank_ == pp_size_ - 1; }
  const LlamaConfig& config() const { return c_; }
  // True for parameters every tp rank holds whole (the norms): a global gradient norm counts
  // them once, not tp times.
  bool replicated_across_tp(const torch::Tensor& p) const;
  // What every decoder layer of this stage recomputes in backward (default: nothing). The
  // gradients are those of the plain model; peak activation memory drops.
  void set_recompute(tenax::Recompute mode);
  // Sequence parallelism over the tp group (no-op for tp = 1): between the tensor-parallel
  // blocks each rank holds its 1/tp of the positions, and a stage's input and output are
  // [batch, seq/tp, dim]; the logits stay [batch, seq, vocab/tp]. The sequence length must be
  // divisible by tp. The gradients are those of the plain model.
  void set_sequence_parallel(bool on);
  bool sequence_parallel() const { return sequence_parallel_; }
  // Runs each decoder layer's forward as runner(k, forward), k the layer's index on this rank
  // (tenax::FullyShardedDataParallel::run_unit gathers the layer's weights around it); empty:
  // forward() directly.
  using LayerRunner = std::function<torch::Tensor(size_t, const std::function<torch::Tensor()>&)>;
  void set_layer_runner(LayerRunner runner) { runner_ = std::move(runner); }
  // This rank's decoder layers, in forward order.
  std::vector<std::shared_ptr<torch::nn::Module>> layer_modules() const;

 private:
  bool sequence_parallel_ = false;
  LayerRunner runner_;
  LlamaConfig c_;
  std::shared_ptr<tenax::Communicator> tp_;
  int pp_rank_, pp_size_;
  Rope rope_;
  tenax::VocabParallelEmbedding embedding_{nullptr};
  torch::nn::ModuleList layers_;
  RMSNorm norm_{nullptr};
  tenax::ColumnParallelLinear output_{nullptr};
  std::unordered_set<const void*> replicated_;
  std::vector<LayerRange> chunk_layers_;  // per chunk: its layers' local indices
  std::vector<int64_t> layer_ids_;        // per local layer: its index in the whole model
};
TORCH_MODULE(Llama);

}  // namespace llama
