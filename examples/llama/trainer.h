#pragma once

// The training loop of llama_train, as a class so that tests can drive single steps: data
// loading by global cursor, gradient accumulation over micro-batches (through a pipeline
// schedule when pp > 1), data-parallel gradient averaging, global-norm clipping across tp and
// pp, AdamW with linear warm-up and cosine decay, and the per-step time split.

#include <tenax/checkpoint/state.h>
#include <tenax/comm/communicator.h>
#include <tenax/core/fault_injection.h>
#include <tenax/health/health.h>
#include <tenax/parallel/loss_scaler.h>
#include <tenax/parallel/mixed_precision.h>
#include <tenax/parallel/recompute.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "config.h"

namespace llama {

struct TrainOptions {
  LlamaConfig model;
  int dp = 0;  // 0: world / (tp * pp)
  int tp = 1;
  int pp = 1;
  std::string pp_schedule = "1f1b";  // or "gpipe"
  // Model chunks per pipeline rank: above 1, the interleaved 1F1B schedule (Megatron-LM's
  // virtual pipeline stages).
  int virtual_stages = 1;
  // What each decoder layer recomputes in backward instead of keeping (tenax/parallel/recompute.h).
  tenax::Recompute recompute = tenax::Recompute::kNone;
  // Sequence parallelism with tp (Llama::set_sequence_parallel); nothing changes at tp = 1.
  bool sequence_parallel = false;
  // Fully sharded data parallelism over dp (tenax/parallel/fully_sharded.h; a unit per decoder
  // layer) instead of DataParallel: weights, gradients and AdamW state are 1/dp per rank. With
  // fsdp_prefetch the next layer's all-gather overlaps the current layer's compute.
  bool fsdp = false;
  bool fsdp_prefetch = true;
  // ZeRO-2 (Megatron's distributed optimizer, tenax::ZeroAdamW) instead of DataParallel: whole
  // weights on every rank, gradients reduce-scattered once per step, AdamW state 1/dp per rank,
  // the updated weights all-gathered.
  bool distributed_optimizer = false;
  // The dtype forward passes compute in (weights, gradients and AdamW stay fp32), and the one
  // data-parallel gradient averages travel in.
  c10::ScalarType dtype = c10::kFloat;
  c10::ScalarType reduce_dtype = c10::kFloat;
  // Loss scaling (tenax/parallel/loss_scaler.h); empty: none. fp16 needs it.
  std::optional<tenax::LossScalerOptions> loss_scale;
  int64_t micro_batch = 4;           // samples per forward/backward on one rank
  int64_t global_batch = 16;         // samples per optimizer step, over all dp ranks
  int64_t seq_len = 128;
  int64_t steps = 300;
  double lr = 3e-3, min_lr = 3e-4;
  int64_t warmup = 20;
  double weight_decay = 0.1, beta1 = 0.9, beta2 = 0.95, clip = 1.0;
  uint64_t seed = 1234;
  // A Hugging Face Llama directory (config.json and safetensors) whose weights the model starts
  // from instead of the seed's draw; `model` must be its shape (config_from_hf). Empty: none.
  std::string init_from_hf;
  std::string data;      // training token file
  std::string val_data;  // validation token file (may be empty: no validation)
  int token_bytes = 2;
  std::string device = "cpu";  // "cpu" (Gloo) or "cuda" (NCCL)
  int device_index = 0;        // the CUDA device (the local rank)
  // A step whose loss or gradient norm is not finite, or whose loss is above loss_spike × the
  // running mean of the losses (0: no spike check): kSkip discards its update on every rank,
  // kRollback throws tenax::StepRollback (the elastic runner restores the newest snapshot and
  // the batch is skipped), kOff applies it anyway.
  tenax::NonFinitePolicy nan_policy = tenax::NonFinitePolicy::kSkip;
  double loss_spike = 0;
  // nan@S, hang_backward@S and sdc@S faults (steps counted from 1); null: none.
  const tenax::FaultInjector* faults = nullptr;
};

// Checks the options against a world of `world_size` ranks without touching the network or
// the model: preset shapes, divisibility of heads, kv_heads, ffn and vocab by tp, of the
// layers by pp, of the world by tp·pp, of the global batch by micro_batch·dp; sizes positive;
// data files present. Returns the options with dp resolved. Throws tenax::ConfigError whose
// message names the flag.
TrainOptions resolve_options(TrainOptions o, int world_size);

// Learning rate at optimizer step `step` (0-based): linear warm-up to lr over `warmup` steps,
// then cosine decay to min_lr at `steps`.
double learning_rate(const TrainOptions& o, int64_t step);

struct StepStats {
  int64_t step = 0;        // the step just completed (0-based)
  double loss = 0;         // mean over the global batch
  double lr = 0;
  double grad_norm = 0;    // global, before clipping
  double seconds = 0;      // wall time of the step
  double comm_seconds = 0; // time blocked on communication in the step
  double ckpt_seconds = 0; // time the step stalled for checkpointing
  int64_t tokens = 0;      // tokens in the global batch
  bool skipped = false;    // the update was discarded (nan_policy kSkip, or an overflow)
  double loss_scale = 0;   // the scale the step's backward used (0: no loss scaling)
  bool overflow = false;   // the scaled gradients overflowed: the step was skipped
};

class Trainer {
 public:
  // Collective over `world`: builds the mesh, the model from `options.seed`, the optimizer and
  // the data loaders. `options` must have been through resolve_options.
  Trainer(const TrainOptions& options, std::shared_ptr<tenax::Communicator> world);
  ~Trainer();

  // One optimizer step on the global batch at cursor step()·global_batch. Collective.
  StepStats train_step();
  // Mean loss of `batches` micro-batches per dp rank from the start of the validation file.
  // Collective. Returns NaN when there is no validation file.
  double evaluate(int batches);

  int64_t step() const;
  // Everything a checkpoint needs, referring to the live tensors: the model's parameters under
  // their whole-model names (tp parts recorded as such), AdamW's moments and step counts, and
  // the ints "step" (optimizer steps done) and "cursor" (global samples consumed).
  tenax::StateDict& state();
  // After a restore into state(): continue from the restored step.
  void resume_from_state();
  int64_t parameter_count() const;  // of the whole model
  const TrainOptions& options() const;

  class Impl;
  Impl& impl() { return *impl_; }

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace llama
