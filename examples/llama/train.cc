// llama_train: trains a Llama-style model with tenax on dp x tp x pp ranks.
//   mpirun -np 4 llama_train --preset tiny --dp 2 --tp 2 --data data/fortunes/train.bin
//   tenaxrun --nproc-per-node 4 llama_train ...        or one process: llama_train ...
// Flags are written with dashes or underscores (--global-batch or --global_batch).

#include <absl/flags/flag.h>
#include <absl/flags/parse.h>
#include <absl/flags/usage.h>
#include <malloc.h>
#include <sys/resource.h>
#include <tenax/checkpoint/engine.h>
#include <tenax/comm/flight_recorder.h>
#include <tenax/comm/init.h>
#include <tenax/core/config.h>
#include <tenax/core/error.h>
#include <tenax/core/fault_injection.h>
#include <tenax/core/logging.h>
#include <tenax/core/time_use.h>
#include <tenax/health/health.h>
#include <tenax/observe/observe.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "config.h"
#include "elastic.h"
#include "hf.h"
#include "step_log.h"
#include "trainer.h"

ABSL_FLAG(std::string, preset, "tiny", "model shape: tiny, small, llama3-1b, llama3-8b, llama3-70b");
ABSL_FLAG(std::string, init_from_hf, "",
          "a Hugging Face Llama directory (save_pretrained: config.json and safetensors): the "
          "model's shape and first weights come from it instead of --preset and --seed");
ABSL_FLAG(bool, eval_only, false,
          "evaluate the validation file (--eval-batches micro-batches per dp rank) on the "
          "starting weights (--init-from-hf, a resumed checkpoint, or --seed's), print the loss "
          "and leave without training");
ABSL_FLAG(int, dp, 0, "data-parallel size (0: world / (tp * pp))");
ABSL_FLAG(int, tp, 1, "tensor-parallel size");
ABSL_FLAG(int, pp, 1, "pipeline-parallel size");
ABSL_FLAG(std::string, pp_schedule, "1f1b", "pipeline schedule: 1f1b or gpipe");
ABSL_FLAG(int, virtual_stages, 1,
          "model chunks per pipeline rank; above 1 the 1f1b schedule is interleaved (a "
          "(p-1)/(v*m) bubble)");
ABSL_FLAG(std::string, dtype, "fp32",
          "compute dtype of forward passes: fp32, bf16 or fp16 (mixed precision: weights, "
          "gradients and AdamW stay fp32; fp16 on CUDA only, with a loss scale)");
ABSL_FLAG(std::string, loss_scale, "",
          "loss scaling: none, dynamic, or a number (a static scale); default dynamic with "
          "--dtype fp16, else none");
ABSL_FLAG(double, initial_loss_scale, 65536, "the dynamic loss scale's first value");
ABSL_FLAG(int64_t, loss_scale_window, 1000,
          "steps without an overflow before the dynamic loss scale doubles");
ABSL_FLAG(double, min_loss_scale, 1, "the dynamic loss scale never halves below it");
ABSL_FLAG(std::string, reduce_dtype, "fp32",
          "dtype the data-parallel gradient averages travel in: fp32 or bf16");
ABSL_FLAG(std::string, recompute, "none",
          "activations recomputed in backward instead of kept: none, full (each decoder layer) "
          "or selective (each layer's core attention)");
ABSL_FLAG(bool, sequence_parallel, false,
          "with --tp: split the activations between the tensor-parallel blocks along the "
          "sequence (all-gather / reduce-scatter instead of all-reduce)");
ABSL_FLAG(bool, fsdp, false,
          "fully sharded data parallelism (ZeRO-3): each dp rank keeps 1/dp of the weights, "
          "gradients and AdamW state; a decoder layer's weights are all-gathered around its "
          "forward and backward, its gradients reduce-scattered");
ABSL_FLAG(bool, fsdp_prefetch, true,
          "with --fsdp: start the next layer's all-gather while the current one computes");
ABSL_FLAG(bool, distributed_optimizer, false,
          "ZeRO-2: gradients reduce-scattered once per step, AdamW state sharded over dp, the "
          "updated weights all-gathered (whole weights on every rank)");
ABSL_FLAG(int64_t, micro_batch, 4, "samples per forward/backward on one rank");
ABSL_FLAG(int64_t, global_batch, 16, "samples per optimizer step over all dp ranks");
ABSL_FLAG(int64_t, seq_len, 128, "tokens per sample");
ABSL_FLAG(int64_t, steps, 300, "optimizer steps");
ABSL_FLAG(double, lr, 3e-3, "peak learning rate");
ABSL_FLAG(double, min_lr, 3e-4, "learning rate at the end of the cosine decay");
ABSL_FLAG(int64_t, warmup, 20, "linear warm-up steps");
ABSL_FLAG(double, weight_decay, 0.1, "AdamW weight decay (matrices only)");
ABSL_FLAG(double, clip, 1.0, "clip gradients to this global norm (0: off)");
ABSL_FLAG(uint64_t, seed, 1234, "seed of the weights and of the data order");
ABSL_FLAG(std::string, data, "", "training token file (uint16 .bin; see llama_prepare)");
ABSL_FLAG(std::string, val_data, "", "validation token file (default: val.bin next to --data)");
ABSL_FLAG(int, token_bytes, 2, "bytes per token in the token files: 2 or 4");
ABSL_FLAG(int64_t, eval_interval, 50, "report the validation loss every N steps (0: never)");
ABSL_FLAG(int, eval_batches, 4, "micro-batches per rank in a validation pass");
ABSL_FLAG(int64_t, log_interval, 10, "log every N steps");
ABSL_FLAG(double, peak_tflops, 0, "declared peak TFLOP/s of one rank's device for MFU "
          "(0: 0.1 for a CPU rank, 989 for a CUDA device, H100/H200 dense BF16)");
ABSL_FLAG(std::string, device, "cpu", "cpu (Gloo collectives) or cuda (NCCL)");
ABSL_FLAG(int64_t, ckpt_every, 0, "save a checkpoint every N steps into host memory (0: never)");
ABSL_FLAG(std::string, ckpt_durable, "", "durable tier: a directory, file:///dir or s3://bucket/prefix");
ABSL_FLAG(int, ckpt_persist_every, 10, "persist every Nth checkpoint to the durable tier");
ABSL_FLAG(int, ckpt_keep, 3, "checkpoints kept in the durable tier");
ABSL_FLAG(int, ckpt_replicate_every, 1, "copy every Nth checkpoint into a peer rank's memory");
ABSL_FLAG(std::string, ckpt_run, "llama", "run name: shared-memory regions and durable prefix");
ABSL_FLAG(bool, resume, true, "with --ckpt-every, start from the newest checkpoint if any");
ABSL_FLAG(int64_t, exit_after, 0, "leave after N steps of this run, as a preempted job would "
          "(0: run to --steps)");
ABSL_FLAG(bool, report_memory, false, "print the parameter count and per-rank memory of the "
          "model on the mesh given by --dp/--tp/--pp, then exit without allocating it");

ABSL_FLAG(bool, elastic, false, "survive failures: re-form without the lost ranks and go on, "
          "regrow when workers join (tenaxrun --nnodes MIN:MAX, or mpirun --enable-recovery)");
ABSL_FLAG(int, min_workers, 0, "--elastic: fewest workers to train with (0: TENAX_MIN_WORKERS, "
          "else tp*pp)");
ABSL_FLAG(int, max_workers, 0, "--elastic: most workers (0: TENAX_MAX_WORKERS, else the launch "
          "world size)");
ABSL_FLAG(int, max_active, 0, "--elastic: train on at most this many workers, the others warm "
          "spares (0: TENAX_ACTIVE_WORKERS, set by tenaxrun --spares; else all)");
ABSL_FLAG(double, heartbeat_timeout, 5.0, "--elastic: seconds of silence before a worker is "
          "declared dead");
ABSL_FLAG(double, join_timeout, 60.0, "--elastic: seconds to wait for --min-workers to join");
ABSL_FLAG(double, last_call, 1.0, "--elastic: seconds the first generation waits for more "
          "workers once --min-workers have joined");

ABSL_FLAG(bool, preflight, false,
          "--elastic: run the health checks before joining (also "
          "TENAX_PREFLIGHT=1, set by tenaxrun --preflight)");
ABSL_FLAG(double, min_busbw, 0,
          "--elastic preflight: all-reduce bus-bandwidth floor in GB/s (0: none)");
ABSL_FLAG(std::string, straggler_policy, "report",
          "--elastic: a member whose compute time stays above the threshold: off, report or evict");
ABSL_FLAG(double, straggler_threshold, 1.5,
          "--elastic: compute time over the group's median "
          "that makes a straggler");
ABSL_FLAG(int, straggler_steps, 5, "--elastic: steps in a row above the threshold before acting");
ABSL_FLAG(int, straggler_window, 10, "--elastic: steps averaged for the straggler score");
ABSL_FLAG(int64_t, hash_every, 0,
          "--elastic: compare the replicas' state hashes every N steps "
          "(0: never)");
ABSL_FLAG(std::string, nan_policy, "skip",
          "a step with a non-finite loss or gradient norm (or a "
          "loss spike): skip (discard its update), rollback (--elastic: back to the last "
          "snapshot, its batch skipped) or off");
ABSL_FLAG(double, loss_spike, 0,
          "treat a loss above this many times the running mean as bad "
          "(0: never)");
ABSL_FLAG(bool, hang_watchdog, false,
          "--elastic: leave when a step runs past its deadline "
          "outside any collective");
ABSL_FLAG(double, hang_deadline_k, 5.0,
          "--elastic: a step's deadline is this many times the "
          "p99 of the steps seen");
ABSL_FLAG(double, hang_deadline_floor, 3.0, "--elastic: seconds no step deadline goes below");

namespace {

// Abseil spells flags with underscores; accept the dashed forms too (--seq-len).
std::vector<char*> underscore_flags(int argc, char** argv, std::vector<std::string>& storage) {
  storage.assign(argv, argv + argc);
  for (auto& a : storage) {
    if (a.rfind("--", 0) != 0) continue;
    const size_t end = std::min(a.find('='), a.size());
    for (size_t i = 2; i < end; ++i) {
      if (a[i] == '-') a[i] = '_';
    }
  }
  std::vector<char*> out;
  for (auto& a : storage) out.push_back(a.data());
  return out;
}

// --loss-scale and its dynamic scale's flags; empty: no loss scaling.
std::optional<tenax::LossScalerOptions> loss_scale_options(c10::ScalarType dtype) {
  std::string mode = absl::GetFlag(FLAGS_loss_scale);
  if (mode.empty()) mode = dtype == c10::kHalf ? "dynamic" : "none";
  if (mode == "none") return std::nullopt;
  tenax::LossScalerOptions s;
  s.init_scale = absl::GetFlag(FLAGS_initial_loss_scale);
  s.growth_interval = absl::GetFlag(FLAGS_loss_scale_window);
  s.min_scale = std::min(absl::GetFlag(FLAGS_min_loss_scale), s.init_scale);
  if (!(s.init_scale > 0) || !std::isfinite(s.init_scale)) {
    throw tenax::ConfigError("--initial-loss-scale " + std::to_string(s.init_scale) +
                             ": expected a positive number");
  }
  if (s.growth_interval < 1) {
    throw tenax::ConfigError("--loss-scale-window " + std::to_string(s.growth_interval) +
                             ": expected at least 1");
  }
  if (!(s.min_scale > 0)) {
    throw tenax::ConfigError("--min-loss-scale " + std::to_string(s.min_scale) +
                             ": expected a positive number");
  }
  if (mode == "dynamic") return s;
  char* end = nullptr;
  const double fixed = std::strtod(mode.c_str(), &end);
  if (end == mode.c_str() || *end != '\0' || !(fixed > 0) || !std::isfinite(fixed)) {
    throw tenax::ConfigError("--loss-scale '" + mode +
                             "': expected none, dynamic or a positive number");
  }
  s.init_scale = s.min_scale = fixed;
  s.dynamic = false;
  return s;
}

llama::TrainOptions options_from_flags() {
  llama::TrainOptions o;
  o.init_from_hf = absl::GetFlag(FLAGS_init_from_hf);
  o.model = o.init_from_hf.empty() ? llama::preset(absl::GetFlag(FLAGS_preset))
                                   : llama::config_from_hf(o.init_from_hf);
  o.dp = absl::GetFlag(FLAGS_dp);
  o.tp = absl::GetFlag(FLAGS_tp);
  o.pp = absl::GetFlag(FLAGS_pp);
  o.pp_schedule = absl::GetFlag(FLAGS_pp_schedule);
  o.virtual_stages = absl::GetFlag(FLAGS_virtual_stages);
  o.recompute = tenax::parse_recompute(absl::GetFlag(FLAGS_recompute), "--recompute");
  o.sequence_parallel = absl::GetFlag(FLAGS_sequence_parallel);
  o.fsdp = absl::GetFlag(FLAGS_fsdp);
  o.fsdp_prefetch = absl::GetFlag(FLAGS_fsdp_prefetch);
  o.distributed_optimizer = absl::GetFlag(FLAGS_distributed_optimizer);
  o.dtype = tenax::parse_dtype(absl::GetFlag(FLAGS_dtype), "--dtype");
  o.reduce_dtype = tenax::parse_dtype(absl::GetFlag(FLAGS_reduce_dtype), "--reduce-dtype");
  o.loss_scale = loss_scale_options(o.dtype);
  o.micro_batch = absl::GetFlag(FLAGS_micro_batch);
  o.global_batch = absl::GetFlag(FLAGS_global_batch);
  o.seq_len = absl::GetFlag(FLAGS_seq_len);
  o.steps = absl::GetFlag(FLAGS_steps);
  o.lr = absl::GetFlag(FLAGS_lr);
  o.min_lr = absl::GetFlag(FLAGS_min_lr);
  o.warmup = absl::GetFlag(FLAGS_warmup);
  o.weight_decay = absl::GetFlag(FLAGS_weight_decay);
  o.clip = absl::GetFlag(FLAGS_clip);
  o.seed = absl::GetFlag(FLAGS_seed);
  o.data = absl::GetFlag(FLAGS_data);
  o.val_data = absl::GetFlag(FLAGS_val_data);
  if (o.val_data.empty() && !o.data.empty()) {
    auto sibling = std::filesystem::path(o.data).parent_path() / "val.bin";
    if (std::filesystem::is_regular_file(sibling) && sibling != o.data) o.val_data = sibling;
  }
  o.token_bytes = absl::GetFlag(FLAGS_token_bytes);
  o.device = absl::GetFlag(FLAGS_device);
  o.nan_policy = tenax::parse_nonfinite_policy(absl::GetFlag(FLAGS_nan_policy), "--nan-policy");
  if (o.nan_policy == tenax::NonFinitePolicy::kRollback && !absl::GetFlag(FLAGS_elastic)) {
    throw tenax::ConfigError("--nan-policy rollback needs --elastic (its snapshots in memory)");
  }
  o.loss_spike = absl::GetFlag(FLAGS_loss_spike);
  if (absl::GetFlag(FLAGS_eval_only)) {
    if (absl::GetFlag(FLAGS_elastic)) throw tenax::ConfigError("--eval-only runs without --elastic");
    if (o.val_data.empty()) {
      throw tenax::ConfigError("--eval-only needs a validation file: --val-data, or val.bin next "
                               "to --data");
    }
  }
  tenax::parse_straggler_policy(absl::GetFlag(FLAGS_straggler_policy), "--straggler-policy");
  return o;
}

std::string gib_text(int64_t bytes) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.2f GiB", double(bytes) / double(1LL << 30));
  return buf;
}

// Micro-batches whose activations the first pipeline stage holds at once.
// Bytes of a projection's output: 2 when forward passes compute in bf16 or fp16.
int compute_bytes(const llama::TrainOptions& o) { return o.dtype == c10::kFloat ? 4 : 2; }

// Micro-batches (of one model chunk, with --virtual-stages) whose activations the first stage
// holds at once.
int64_t in_flight(int pp, const std::string& schedule, int64_t accumulation, int chunks) {
  if (pp == 1) return 1;  // each micro-batch's backward follows its forward
  if (chunks > 1) {       // the interleaved warm-up, plus the forward before the first backward
    return std::min<int64_t>(accumulation * chunks, 2 * (pp - 1) + (chunks - 1) * pp + 1);
  }
  return schedule == "gpipe" ? accumulation : std::min<int64_t>(pp, accumulation);
}

// The mesh with the fewest model-parallel ranks (tp within a node: at most 8), and on it the
// cheapest recomputation, whose model state (AdamW sharded over dp; everything, with --fsdp) and
// activations (1F1B with pp micro-batches in flight) fit `gib` GiB; prints it, or that none does.
void print_fitting_mesh(const llama::TrainOptions& o, int dp, double gib) {
  const auto& c = o.model;
  const double limit = gib * double(1LL << 30);
  const tenax::Recompute modes[] = {tenax::Recompute::kNone, tenax::Recompute::kSelective,
                                    tenax::Recompute::kFull};
  for (int mp = 1; mp <= 8 * 64; mp *= 2) {
    for (int tp = 1; tp <= std::min(mp, 8); tp *= 2) {
      const int pp = mp / tp;
      if (c.heads % tp || c.kv_heads % tp || c.ffn % tp || c.vocab % tp || pp > c.layers) continue;
      if (c.tie_embeddings && pp > 1) continue;
      const auto state = llama::estimate_memory(
          c, dp, tp, pp, o.fsdp ? llama::Sharding::kFull : llama::Sharding::kOptimizer);
      for (auto mode : modes) {
        const auto act =
            llama::estimate_activations(c, tp, pp, o.micro_batch, o.seq_len, pp, mode,
                                        o.sequence_parallel && tp > 1, compute_bytes(o));
        const int64_t total = state.total_bytes() + act.total_bytes;
        if (double(total) > limit) continue;
        std::printf(
            "fits %.0f GiB: tp=%d pp=%d dp=%d%s, recompute %s: model state %s + "
            "activations %s = %s\n",
            gib, tp, pp, dp, o.fsdp ? " fully sharded" : "", tenax::recompute_name(mode),
            gib_text(state.total_bytes()).c_str(),
            gib_text(act.total_bytes).c_str(), gib_text(total).c_str());
        return;
      }
    }
  }
  std::printf(
      "fits %.0f GiB: no mesh up to tp=8 x pp=64 at dp=%d (fp32 weights; try a larger dp, "
      "a shorter --seq-len or a smaller --micro-batch)\n",
      gib, dp);
}

int report_memory(const llama::TrainOptions& o) {
  const int dp = o.dp > 0 ? o.dp : 1;
  auto plain = llama::estimate_memory(o.model, dp, o.tp, o.pp, llama::Sharding::kNone);
  auto sharded = llama::estimate_memory(o.model, dp, o.tp, o.pp, llama::Sharding::kOptimizer);
  auto full = llama::estimate_memory(o.model, dp, o.tp, o.pp, llama::Sharding::kFull);
  std::printf("preset %s: %lld parameters (%.2f B)\n", o.model.name.c_str(),
              (long long)llama::parameter_count(o.model),
              double(llama::parameter_count(o.model)) / 1e9);
  std::printf("mesh dp=%d tp=%d pp=%d: %lld parameters on the most loaded rank\n", dp, o.tp, o.pp,
              (long long)plain.params_per_rank);
  std::printf(
      "per rank, fp32 weights %s + gradients %s + AdamW %s = %s "
      "(AdamW sharded over dp: %s)\n",
      gib_text(plain.weight_bytes).c_str(), gib_text(plain.grad_bytes).c_str(),
      gib_text(plain.optimizer_bytes).c_str(), gib_text(plain.total_bytes()).c_str(),
      gib_text(sharded.total_bytes()).c_str());
  std::printf(
      "per rank, fully sharded over dp (--fsdp): weights %s + gradients %s + AdamW %s + "
      "gathered during a step %s = %s\n",
      gib_text(full.weight_bytes).c_str(), gib_text(full.grad_bytes).c_str(),
      gib_text(full.optimizer_bytes).c_str(), gib_text(full.gathered_bytes).c_str(),
      gib_text(full.total_bytes()).c_str());
  const int64_t accumulation = std::max<int64_t>(1, o.global_batch / (o.micro_batch * dp));
  const int64_t flight = in_flight(o.pp, o.pp_schedule, accumulation, o.virtual_stages);
  for (auto mode :
       {tenax::Recompute::kNone, tenax::Recompute::kSelective, tenax::Recompute::kFull}) {
    // A chunk holds the layers of one of pp·v virtual stages.
    const auto act = llama::estimate_activations(o.model, o.tp, o.pp * o.virtual_stages,
                                                 o.micro_batch, o.seq_len, flight, mode,
                                                 o.sequence_parallel && o.tp > 1, compute_bytes(o));
    std::printf(
        "activations, micro-batch %lld x seq %lld, %lld in flight, %s%s, recompute %-9s %s%s\n",
        (long long)o.micro_batch, (long long)o.seq_len, (long long)flight,
        tenax::dtype_name(o.dtype).c_str(),
        o.sequence_parallel && o.tp > 1 ? ", sequence parallel" : "",
        (std::string(tenax::recompute_name(mode)) + ":").c_str(), gib_text(act.total_bytes).c_str(),
        mode == o.recompute ? "  (--recompute)" : "");
  }
  print_fitting_mesh(o, dp, 80);
  print_fitting_mesh(o, dp, 141);
  return 0;
}

// The checkpoint flags, for static and elastic runs alike.
tenax::CheckpointOptions checkpoint_options_from_flags() {
  tenax::CheckpointOptions co = tenax::CheckpointOptions::from_environment();
  co.run = absl::GetFlag(FLAGS_ckpt_run);
  co.durable = absl::GetFlag(FLAGS_ckpt_durable);
  co.persist_every = absl::GetFlag(FLAGS_ckpt_persist_every);
  co.keep_durable = absl::GetFlag(FLAGS_ckpt_keep);
  co.replicate_every = absl::GetFlag(FLAGS_ckpt_replicate_every);
  return co;
}

double peak_tflops(const llama::TrainOptions& o) {
  const double peak = absl::GetFlag(FLAGS_peak_tflops);
  return peak > 0 ? peak : o.device == "cuda" ? 989.0 : 0.1;
}

llama::StepLog step_log(const llama::TrainOptions& o) {
  return llama::StepLog(o.steps, absl::GetFlag(FLAGS_log_interval),
                        llama::flops_per_token(o.model, o.seq_len), peak_tflops(o));
}

// The elastic flags; worker bounds default to what tenaxrun's elastic agent says.
llama::ElasticRunOptions elastic_options_from_flags(const llama::TrainOptions& o,
                                                    const tenax::LaunchInfo& launch) {
  llama::ElasticRunOptions eo;
  eo.train = o;
  eo.eval_interval = absl::GetFlag(FLAGS_eval_interval);
  eo.eval_batches = absl::GetFlag(FLAGS_eval_batches);
  auto& r = eo.elastic.rendezvous;
  r.run = absl::GetFlag(FLAGS_ckpt_run);
  const int min_flag = absl::GetFlag(FLAGS_min_workers), max_flag = absl::GetFlag(FLAGS_max_workers);
  r.min_workers = min_flag > 0 ? min_flag
                               : static_cast<int>(tenax::env_int("TENAX_MIN_WORKERS", o.tp * o.pp));
  r.max_workers = max_flag > 0 ? max_flag
                               : static_cast<int>(tenax::env_int("TENAX_MAX_WORKERS", launch.size));
  auto ms = [](double s) { return std::chrono::milliseconds(static_cast<int64_t>(s * 1000)); };
  r.heartbeat_timeout = ms(absl::GetFlag(FLAGS_heartbeat_timeout));
  r.heartbeat_interval = std::max(std::chrono::milliseconds(20), r.heartbeat_timeout / 10);
  r.join_timeout = ms(absl::GetFlag(FLAGS_join_timeout));
  r.last_call = ms(absl::GetFlag(FLAGS_last_call));
  eo.elastic.checkpoint = checkpoint_options_from_flags();
  eo.elastic.snapshot_every = std::max<int64_t>(1, absl::GetFlag(FLAGS_ckpt_every));
  eo.elastic.max_active = absl::GetFlag(FLAGS_max_active);
  tenax::HealthOptions& h = eo.elastic.health;
  h.preflight.enabled = absl::GetFlag(FLAGS_preflight);
  h.preflight.min_busbw_gbps = absl::GetFlag(FLAGS_min_busbw);
  // On CUDA the preflight's GEMM and all-reduce run on this rank's device.
  if (o.device == "cuda") h.preflight.cuda_device = o.device_index;
  h.straggler =
      tenax::parse_straggler_policy(absl::GetFlag(FLAGS_straggler_policy), "--straggler-policy");
  h.straggler_threshold = absl::GetFlag(FLAGS_straggler_threshold);
  h.straggler_steps = absl::GetFlag(FLAGS_straggler_steps);
  h.straggler_window = absl::GetFlag(FLAGS_straggler_window);
  h.replica_hash_every = absl::GetFlag(FLAGS_hash_every);
  h.hang_watchdog = absl::GetFlag(FLAGS_hang_watchdog);
  h.deadline_k = absl::GetFlag(FLAGS_hang_deadline_k);
  h.deadline_floor = ms(absl::GetFlag(FLAGS_hang_deadline_floor));
  return eo;
}

// The training options from the flags, checked before any rank starts work (rank 0 says what
// is wrong, once); nullopt after --report-memory or a bad flag, with `exit_code` set.
std::optional<llama::TrainOptions> checked_options(const tenax::LaunchInfo& launch,
                                                   int& exit_code) {
  try {
    llama::TrainOptions o = options_from_flags();
    if (absl::GetFlag(FLAGS_report_memory)) {
      llama::validate(o.model);
      exit_code = launch.rank == 0 ? report_memory(o) : 0;
      return std::nullopt;
    }
    if (absl::GetFlag(FLAGS_elastic)) {
      // Checked at the largest world here (--max-workers, else the launch size); each
      // generation resolves dp and the micro-batch anew.
      const int replica = std::max(1, o.tp * o.pp);
      const int most = absl::GetFlag(FLAGS_max_workers) > 0 ? absl::GetFlag(FLAGS_max_workers)
                                                            : launch.size;
      llama::TrainOptions v = o;
      v.dp = std::max(1, most / replica);
      v.micro_batch = llama::elastic_micro_batch(v.global_batch, v.dp, v.micro_batch);
      llama::resolve_options(v, v.dp * replica);
    } else {
      o = llama::resolve_options(o, launch.size);
    }
    o.device_index = launch.local_rank;
    return o;
  } catch (const tenax::Error& e) {
    if (launch.rank == 0) std::cerr << "llama_train: " << e.what() << std::endl;
    exit_code = 2;
    return std::nullopt;
  }
}

// --elastic: the trainer under ElasticRunner, through any number of re-formations.
int run_elastic(const llama::TrainOptions& o, const tenax::LaunchInfo& launch,
                const tenax::FaultInjector& faults) {
  try {
    tenax::World world = tenax::connect();
    llama::ElasticRunOptions eo = elastic_options_from_flags(o, launch);
    eo.elastic.faults = &faults;
    eo.train.faults = &faults;
    llama::StepLog log = step_log(o);
    const tenax::RunResult r = llama::run_elastic(eo, log, world.store);
    if (!r.finished() && r.reason != tenax::StopReason::kPreempted) {
      std::cerr << "llama_train: " << launch.member << " stopped: " << tenax::to_string(r.reason)
                << " (" << r.why << ") after " << r.steps << " steps; exit status "
                << tenax::exit_code(r.reason) << std::endl;
    }
    return tenax::exit_code(r.reason);
  } catch (const tenax::HealthError& e) {
    std::cerr << "llama_train: " << e.what() << std::endl;
    return tenax::kUnhealthyExitCode;
  } catch (const tenax::Error& e) {
    std::cerr << "llama_train: " << e.what() << std::endl;
    return 1;
  }
}

// Resumes `trainer` from the newest complete checkpoint when there is one (--resume).
void resume(tenax::CheckpointEngine& ckpt, llama::Trainer& trainer, bool leader) {
  const auto start = std::chrono::steady_clock::now();
  auto r = ckpt.restore(trainer.state());
  if (!r) return;
  trainer.resume_from_state();
  if (!leader) return;
  std::printf("llama_train: resumed at step %lld from the %s tier (%lld bytes on rank 0%s) in "
              "%.1f ms\n",
              (long long)r->step, r->tier.c_str(), (long long)r->bytes,
              r->resharded ? ", resharded" : "",
              std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start)
                  .count());
  std::fflush(stdout);
}

// A static run: one world for the whole job; a failure ends it (resume with --ckpt-every).
int run_static(llama::TrainOptions o, const tenax::FaultInjector& faults) {
  o.faults = &faults;
  try {
    tenax::InitOptions init;
    if (o.device == "cuda") init.backend = tenax::Backend::kNccl;
    tenax::World world = tenax::init(init);
    llama::Trainer trainer(o, world.comm);
    const bool leader = world.rank == 0;
    if (leader) {
      std::printf("llama_train: preset %s, %.2f M parameters, %d ranks (%s): dp=%d tp=%d pp=%d%s\n",
                  o.model.name.c_str(), double(trainer.parameter_count()) / 1e6, world.size,
                  world.info.launcher.c_str(), o.dp, o.tp, o.pp,
                  o.pp > 1 ? (" " + o.pp_schedule).c_str() : "");
      std::printf("llama_train: global batch %lld x %lld tokens, micro-batch %lld, %lld "
                  "accumulation steps; data %s; MFU against %.3g TFLOP/s per rank\n",
                  (long long)o.global_batch, (long long)o.seq_len, (long long)o.micro_batch,
                  (long long)(o.global_batch / (o.micro_batch * o.dp)), o.data.c_str(),
                  peak_tflops(o));
      std::fflush(stdout);
    }
    const int64_t ckpt_every = absl::GetFlag(FLAGS_ckpt_every);
    std::unique_ptr<tenax::CheckpointEngine> ckpt;
    if (ckpt_every > 0) {
      ckpt = std::make_unique<tenax::CheckpointEngine>(checkpoint_options_from_flags(), world.comm,
                                                       world.store);
      if (absl::GetFlag(FLAGS_resume)) resume(*ckpt, trainer, leader);
    }
    if (absl::GetFlag(FLAGS_eval_only)) {
      const int batches = absl::GetFlag(FLAGS_eval_batches);
      const double loss = trainer.evaluate(batches);
      if (leader) {
        std::printf("llama_train: validation loss %.8f over %lld tokens at step %lld\n", loss,
                    (long long)(int64_t(batches) * o.micro_batch * o.dp * o.seq_len),
                    (long long)trainer.step());
      }
      return 0;
    }
    const int64_t exit_after = absl::GetFlag(FLAGS_exit_after);
    const int64_t first_step = trainer.step();
    const int64_t eval_every = absl::GetFlag(FLAGS_eval_interval);
    llama::StepLog log = step_log(o);
    log.set_world(world.size, leader);
    tenax::account_time(tenax::TimeUse::kStartup, tenax::process_seconds());
    for (int64_t step = first_step; step < o.steps; ++step) {
      if (exit_after > 0 && step - first_step >= exit_after) {
        if (ckpt) ckpt->wait();
        if (leader) std::printf("llama_train: leaving after step %lld (--exit-after)\n", (long long)step);
        return 0;
      }
      faults.at_step(step + 1);  // steps count from 1, as the log does
      llama::StepStats s = trainer.train_step();
      if (ckpt && (step + 1) % ckpt_every == 0) {
        const auto start = std::chrono::steady_clock::now();
        ckpt->save(step + 1, trainer.state());
        s.ckpt_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
        s.seconds += s.ckpt_seconds;
      }
      log.add(s);
      tenax::account_time(tenax::TimeUse::kProductive, s.seconds - s.ckpt_seconds);
      tenax::account_time(tenax::TimeUse::kCheckpointStall, s.ckpt_seconds);
      if (eval_every > 0 && ((step + 1) % eval_every == 0 || step + 1 == o.steps)) {
        const double v = trainer.evaluate(absl::GetFlag(FLAGS_eval_batches));
        if (!std::isnan(v)) log.validation(step + 1, v);
      }
    }
    if (ckpt) ckpt->wait();
    world.comm->barrier();
    if (leader) {
      std::printf("llama_train: done, %lld steps", (long long)o.steps);
      if (log.steady_tokens_per_second() > 0) {
        std::printf(", %.1f tokens/s over steps 4-%lld", log.steady_tokens_per_second(),
                    (long long)o.steps);
      }
      struct rusage usage {};
      ::getrusage(RUSAGE_SELF, &usage);
      std::printf(", peak resident memory %.0f MiB\n", double(usage.ru_maxrss) / 1024.0);
    }
    return 0;
  } catch (const tenax::Error& e) {
    std::cerr << "llama_train: " << e.what() << std::endl;
    return 1;
  }
}

// Keeps freed tensor memory in the process for the next step's tensors of the same sizes (as a
// caching allocator does): glibc otherwise maps every allocation above 128 KiB afresh, or gives
// the heap's top back, and each step faults tens of megabytes of pages in again. A fixed mmap
// threshold of 32 MiB (glibc's most) and a trim threshold of 1 GiB; only this program's
// allocator is tuned, tenax the library leaves it alone.
void keep_freed_memory() {
  mallopt(M_MMAP_THRESHOLD, 32 << 20);
  mallopt(M_TRIM_THRESHOLD, 1 << 30);
}

}  // namespace

int main(int argc, char** argv) {
  keep_freed_memory();
  absl::SetProgramUsageMessage("trains a Llama-style model with tenax; see examples/llama/README.md");
  std::vector<std::string> storage;
  auto args = underscore_flags(argc, argv, storage);
  absl::ParseCommandLine(static_cast<int>(args.size()), args.data());
  const tenax::LaunchInfo launch = tenax::detect_launch();
  std::optional<tenax::FaultInjector> faults;  // TENAX_FAULT, for tests and demos
  try {
    // This program is the launch edge: logging and the flight recorder take the environment's
    // options (TENAX_LOG_LEVEL, TENAX_LOG_FORMAT, TENAX_FLIGHT_DIR, TENAX_FLIGHT_ENTRIES).
    tenax::set_log_options(tenax::LogOptions::from_environment());
    tenax::set_flight_recorder_options(tenax::FlightRecorderOptions::from_environment());
    faults.emplace(tenax::FaultInjector::from_env(launch.rank));
  } catch (const tenax::Error& e) {
    if (launch.rank == 0) std::cerr << "llama_train: " << e.what() << std::endl;
    return 2;
  }
  int exit_code = 0;
  const std::optional<llama::TrainOptions> o = checked_options(launch, exit_code);
  if (!o) return exit_code;
  // Metrics (TENAX_METRICS_PORT) before any work: a port that cannot be served stops the rank
  // here rather than leaving it to train unobserved.
  // The signals are this program's to give: SIGUSR1 dumps the flight records (with
  // TENAX_FLIGHT_DIR); --elastic also hands SIGTERM to tenax (graceful preemption).
  tenax::install_flight_signal_handler();
  std::optional<tenax::observe::Observability> observability;
  try {
    observability.emplace(tenax::observe::ObserveOptions::from_environment(launch.local_rank));
  } catch (const tenax::Error& e) {
    std::cerr << "llama_train: rank " << launch.rank << ": " << e.what() << std::endl;
    return 2;
  }
  return absl::GetFlag(FLAGS_elastic) ? run_elastic(*o, launch, *faults) : run_static(*o, *faults);
}
