#pragma once

// Megatron-style tensor parallelism as LibTorch modules. Each layer holds its shard of the
// weights of the equivalent torch::nn layer; communication happens inside custom autograd
// functions on the tp communicator. Every rank builds the full layer from the same RNG state and
// keeps its shard, so a tp model starts from exactly the weights of the tp=1 model built with the
// same seed, and consumes the RNG the same way.
// Thread rules: the layers and operators issue collectives on the tp communicator in forward
// and, through autograd, in backward: one forward or backward of a model at a time, on every
// tp rank in the same order, and nothing else issues operations on that communicator meanwhile
// (Communicator's rules). A layer's parameters belong to the training thread.

#include <torch/nn/cloneable.h>
#include <torch/nn/modules/container/any.h>
#include <torch/nn/pimpl.h>

#include <memory>
#include <vector>

#include "tenax/comm/communicator.h"
#include "tenax/core/export.h"

namespace tenax {

// Autograd-aware collectives on the tp group (the "f" and "g" operators of Megatron-LM):
// identity forward / all-reduce backward, and the reverse; split / gather along the last dim.
TENAX_API torch::Tensor copy_to_tensor_parallel(const torch::Tensor& x, Communicator& tp);
TENAX_API torch::Tensor reduce_from_tensor_parallel(const torch::Tensor& x, Communicator& tp);
TENAX_API torch::Tensor scatter_to_tensor_parallel(const torch::Tensor& x, Communicator& tp);
TENAX_API torch::Tensor gather_from_tensor_parallel(const torch::Tensor& x, Communicator& tp);

// Sequence parallelism (Megatron-LM's, with tensor parallelism): outside the tensor-parallel
// blocks (norms, residual adds, dropout) activations are split along the sequence dimension
// `dim` over the tp group instead of held whole by every rank, so each rank keeps 1/tp of them.
// Into a block, the chunks are all-gathered (backward: the input gradient reduce-scattered);
// out of it, the partial sums are reduce-scattered instead of all-reduced (backward:
// all-gathered). Same bytes on the wire as the all-reduces they replace. ConfigError, naming
// the rank, when tp does not divide the dimension.
TENAX_API torch::Tensor gather_from_sequence_parallel(const torch::Tensor& x, Communicator& tp,
                                                      int64_t dim = 1);
TENAX_API torch::Tensor reduce_scatter_to_sequence_parallel(const torch::Tensor& x,
                                                            Communicator& tp, int64_t dim = 1);
// This rank's chunk of a tensor every rank holds whole (backward: all-gathered).
TENAX_API torch::Tensor scatter_to_sequence_parallel(const torch::Tensor& x, Communicator& tp,
                                                     int64_t dim = 1);

// Column-parallel products of one sequence-parallel input: x is this rank's chunk
// [batch, seq/tp, in]; returns x_full · W_iᵀ for each weight (this rank's rows of each layer),
// x_full being x all-gathered along `dim` once for all of them. Only the chunk is kept for
// backward, which gathers it again (so the whole input is never held between the passes) and
// reduce-scatters the summed input gradient. Under autocast the products compute in its dtype,
// as a plain linear would; the weights' gradients come back in their own dtype.
TENAX_API std::vector<torch::Tensor> sequence_parallel_linears(
    const torch::Tensor& x, const std::vector<torch::Tensor>& weights, Communicator& tp,
    int64_t dim = 1);

// Y = X Wᵀ + b with W split by output rows: rank k holds rows [k·out/tp, (k+1)·out/tp).
// Output is this rank's slice of the last dim, or the whole of it with gather_output.
class TENAX_API ColumnParallelLinearImpl : public torch::nn::Cloneable<ColumnParallelLinearImpl> {
 public:
  // Throws ConfigError when tp does not divide `out`.
  ColumnParallelLinearImpl(int64_t in, int64_t out, std::shared_ptr<Communicator> tp,
                           bool gather_output = false, bool bias = true);
  void reset() override;
  torch::Tensor forward(const torch::Tensor& x);
  // On: the input is this rank's sequence chunk [batch, seq/tp, in], all-gathered along dim 1
  // before the product (gather_from_sequence_parallel).
  void set_sequence_parallel(bool on) { sequence_parallel_ = on; }
  torch::Tensor weight, bias;
  // The tp group: weight and bias are this rank's rows (dim 0) of the whole layer's.
  const std::shared_ptr<Communicator>& group() const { return tp_; }

 private:
  int64_t in_, out_;
  std::shared_ptr<Communicator> tp_;
  bool gather_output_, has_bias_;
  bool sequence_parallel_ = false;
};
TORCH_MODULE(ColumnParallelLinear);

// Y = X Wᵀ + b with W split by input columns: rank k holds columns [k·in/tp, (k+1)·in/tp).
// With input_is_parallel the input is already this rank's slice of the last dim (as a
// ColumnParallelLinear without gather_output produces). The partial products are all-reduced;
// the bias is added once, after.
class TENAX_API RowParallelLinearImpl : public torch::nn::Cloneable<RowParallelLinearImpl> {
 public:
  // Throws ConfigError when tp does not divide `in`.
  RowParallelLinearImpl(int64_t in, int64_t out, std::shared_ptr<Communicator> tp,
                        bool input_is_parallel = true, bool bias = true);
  void reset() override;
  torch::Tensor forward(const torch::Tensor& x);
  // On: the partial products are reduce-scattered along dim 1 (the sequence) instead of
  // all-reduced: the output is this rank's sequence chunk of the sum.
  void set_sequence_parallel(bool on) { sequence_parallel_ = on; }
  torch::Tensor weight, bias;
  // The tp group: weight is this rank's columns (dim 1) of the whole layer's; bias is whole.
  const std::shared_ptr<Communicator>& group() const { return tp_; }

 private:
  int64_t in_, out_;
  std::shared_ptr<Communicator> tp_;
  bool input_is_parallel_, has_bias_;
  bool sequence_parallel_ = false;
};
TORCH_MODULE(RowParallelLinear);

// An embedding table split by vocabulary rows: each rank looks up the ids it owns, the others
// contribute zeros, and the partial results are all-reduced.
class TENAX_API VocabParallelEmbeddingImpl
    : public torch::nn::Cloneable<VocabParallelEmbeddingImpl> {
 public:
  // Throws ConfigError when tp does not divide `vocab`.
  VocabParallelEmbeddingImpl(int64_t vocab, int64_t dim, std::shared_ptr<Communicator> tp);
  void reset() override;
  torch::Tensor forward(const torch::Tensor& ids);
  // On: the partial lookups are reduce-scattered along dim 1 (ids [batch, seq]): the output is
  // this rank's sequence chunk [batch, seq/tp, dim].
  void set_sequence_parallel(bool on) { sequence_parallel_ = on; }
  torch::Tensor weight;
  // The tp group: weight is this rank's vocabulary rows (dim 0) of the whole table.
  const std::shared_ptr<Communicator>& group() const { return tp_; }

 private:
  int64_t vocab_, dim_;
  std::shared_ptr<Communicator> tp_;
  bool sequence_parallel_ = false;
};
TORCH_MODULE(VocabParallelEmbedding);

// Multi-head self-attention with the heads split across the tp group: rank k computes heads
// [k·H/T, (k+1)·H/T). Q, K and V are column-parallel (each rank holds its heads' rows), the
// output projection is row-parallel, so the block communicates once in forward and once in
// backward. Built from the same RNG draws as four torch::nn::Linear(dim, dim) layers created
// in the order q, k, v, out. Input [batch, seq, dim]; `causal` masks future positions.
class TENAX_API ParallelSelfAttentionImpl : public torch::nn::Cloneable<ParallelSelfAttentionImpl> {
 public:
  // Throws ConfigError when heads does not divide dim or tp does not divide heads.
  ParallelSelfAttentionImpl(int64_t dim, int64_t heads, std::shared_ptr<Communicator> tp,
                            bool causal = true);
  void reset() override;
  torch::Tensor forward(const torch::Tensor& x);
  ColumnParallelLinear q{nullptr}, k{nullptr}, v{nullptr};
  RowParallelLinear out{nullptr};

 private:
  int64_t dim_, heads_;
  std::shared_ptr<Communicator> tp_;
  bool causal_;
};
TORCH_MODULE(ParallelSelfAttention);

// Mean cross-entropy of logits split by vocabulary over the tp group (this rank holds columns
// [k·V/tp, (k+1)·V/tp) of `logits`, shape [N, V/tp]) against `targets` [N] of global ids. The
// full logits never exist on one rank: only per-row max, sum of exponentials and target logit
// (3 × N floats) are all-reduced.
TENAX_API torch::Tensor vocab_parallel_cross_entropy(const torch::Tensor& logits,
                                                     const torch::Tensor& targets,
                                                     Communicator& tp);

}  // namespace tenax
