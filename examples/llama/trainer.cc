#include "trainer.h"

#include <tenax/checkpoint/module_state.h>
#include <tenax/core/error.h>
#include <tenax/core/logging.h>
#include <tenax/core/metrics.h>
#include <tenax/core/time_use.h>
#include <tenax/elastic/elastic.h>
#include <tenax/observe/observe.h>
#include <torch/torch.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <limits>

#include "hf.h"
#include "hf_weights.h"
#include "trainer_impl.h"

namespace llama {
namespace {

using tenax::ConfigError;

std::string str(int64_t v) { return std::to_string(v); }

}  // namespace

TrainOptions resolve_options(TrainOptions o, int world_size) {
  validate(o.model);
  const LlamaConfig& c = o.model;
  if (o.tp < 1 || o.pp < 1 || o.dp < 0) throw ConfigError("--dp, --tp and --pp must be positive");
  for (auto [what, n] : {std::pair<const char*, int64_t>{"heads", c.heads}, {"kv_heads", c.kv_heads},
                         {"ffn", c.ffn}, {"vocab", c.vocab}}) {
    if (n % o.tp != 0) {
      throw ConfigError("--tp " + str(o.tp) + " does not divide the " + what + " (" + str(n) +
                        ") of preset " + c.name);
    }
  }
  if (o.virtual_stages < 1) throw ConfigError("--virtual-stages must be positive");
  if (o.pp * o.virtual_stages > c.layers) {
    throw ConfigError("--pp " + str(o.pp) +
                      (o.virtual_stages > 1 ? " x --virtual-stages " + str(o.virtual_stages) : "") +
                      " exceeds the " + str(c.layers) + " layers of preset " + c.name);
  }
  if (c.tie_embeddings && o.pp > 1) {
    throw ConfigError("--pp " + str(o.pp) + ": preset " + c.name +
                      " ties its embeddings, which needs --pp 1");
  }
  if (world_size % (o.tp * o.pp) != 0) {
    throw ConfigError("--tp " + str(o.tp) + " x --pp " + str(o.pp) + " does not divide the " +
                      str(world_size) + " ranks");
  }
  if (o.dp == 0) o.dp = world_size / (o.tp * o.pp);
  if (o.dp * o.tp * o.pp != world_size) {
    throw ConfigError("--dp " + str(o.dp) + " x --tp " + str(o.tp) + " x --pp " + str(o.pp) +
                      " = " + str(o.dp * o.tp * o.pp) + " but there are " + str(world_size) +
                      " ranks");
  }
  if (o.sequence_parallel && o.seq_len % o.tp != 0) {
    throw ConfigError("--sequence-parallel splits the sequence over tp: --seq-len " +
                      str(o.seq_len) + " is not divisible by --tp " + str(o.tp));
  }
  if (o.pp_schedule != "1f1b" && o.pp_schedule != "gpipe") {
    throw ConfigError("--pp-schedule '" + o.pp_schedule + "': expected 1f1b or gpipe");
  }
  if (o.dtype == c10::kHalf && o.device != "cuda") {
    throw ConfigError(
        "--dtype fp16 computes on CUDA only (the CPU's autocast is bf16 only): "
        "use --dtype bf16, or --device cuda");
  }
  if (o.dtype == c10::kHalf && !o.loss_scale) {
    throw ConfigError(
        "--dtype fp16 needs a loss scale (--loss-scale dynamic or a number): "
        "its small gradients flush to zero without one");
  }
  if (o.dtype != c10::kFloat && o.dtype != c10::kBFloat16 && o.dtype != c10::kHalf) {
    throw ConfigError("--dtype " + tenax::dtype_name(o.dtype) + ": expected fp32, bf16 or fp16");
  }
  if (o.loss_scale) tenax::LossScaler check(*o.loss_scale);  // its options' own errors
  if (o.reduce_dtype != c10::kFloat && o.reduce_dtype != c10::kBFloat16) {
    throw ConfigError("--reduce-dtype " + tenax::dtype_name(o.reduce_dtype) +
                      ": expected fp32 or bf16");
  }
  if (o.fsdp && o.distributed_optimizer) {
    throw ConfigError("--fsdp shards the optimizer state already: drop --distributed-optimizer");
  }
  if (o.micro_batch < 1 || o.global_batch < 1 || o.seq_len < 1 || o.steps < 1) {
    throw ConfigError("--micro-batch, --global-batch, --seq-len and --steps must be positive");
  }
  if (o.global_batch % (o.micro_batch * o.dp) != 0) {
    throw ConfigError("--global-batch " + str(o.global_batch) + " is not divisible by " +
                      "--micro-batch " + str(o.micro_batch) + " x dp " + str(o.dp) + " = " +
                      str(o.micro_batch * o.dp));
  }
  if (o.virtual_stages > 1) {
    const int64_t micro_batches = o.global_batch / (o.micro_batch * o.dp);
    if (o.pp < 2 || o.pp_schedule != "1f1b") {
      throw ConfigError("--virtual-stages " + str(o.virtual_stages) +
                        " interleaves the 1f1b schedule: it needs --pp 2 or more and "
                        "--pp-schedule 1f1b");
    }
    if (micro_batches % o.pp != 0) {
      throw ConfigError("--virtual-stages needs the micro-batches of a batch (--global-batch " +
                        str(o.global_batch) + " / (--micro-batch " + str(o.micro_batch) + " x dp " +
                        str(o.dp) + ") = " + str(micro_batches) + ") divisible by --pp " +
                        str(o.pp));
    }
  }
  if (o.warmup < 0 || o.lr <= 0 || o.min_lr < 0 || o.clip < 0) {
    throw ConfigError("--lr must be positive and --min-lr, --warmup, --clip not negative");
  }
  if (o.device != "cpu" && o.device != "cuda") {
    throw ConfigError("--device '" + o.device + "': expected cpu or cuda");
  }
  if (o.data.empty()) throw ConfigError("--data: no token file given (make one with llama_prepare)");
  for (const auto& [flag, path] : {std::pair<const char*, std::string>{"--data", o.data},
                                   {"--val-data", o.val_data}}) {
    if (!path.empty() && !std::filesystem::is_regular_file(path)) {
      throw ConfigError(std::string(flag) + ": token file " + path +
                        " does not exist (make it with llama_prepare)");
    }
  }
  return o;
}

double learning_rate(const TrainOptions& o, int64_t step) {
  if (step < o.warmup) return o.lr * double(step + 1) / double(o.warmup);
  const int64_t decay = std::max<int64_t>(1, o.steps - o.warmup);
  const double progress = std::min(1.0, double(step - o.warmup) / double(decay));
  return o.min_lr + 0.5 * (o.lr - o.min_lr) * (1.0 + std::cos(M_PI * progress));
}

Trainer::Impl::Impl(const TrainOptions& options, std::shared_ptr<tenax::Communicator> world)
    : o(options), device(torch::kCPU) {
  if (o.device == "cuda") device = torch::Device(torch::kCUDA, o.device_index);
  mesh = std::make_unique<tenax::ProcessMesh>(
      world, tenax::MeshOptions().data_parallel(o.dp).tensor_parallel(o.tp).pipeline_parallel(o.pp));
  tenax::observe::set_label("dp", std::to_string(mesh->dp_rank()));
  tenax::observe::set_label("tp", std::to_string(mesh->tp_rank()));
  tenax::observe::set_label("pp", std::to_string(mesh->pp_rank()));
  torch::manual_seed(o.seed);
  model = Llama(o.model, o.seq_len, mesh->tp(), mesh->pp_rank(), o.pp, o.virtual_stages);
  model->set_recompute(o.recompute);
  model->set_sequence_parallel(o.sequence_parallel);
  model->to(device);
  if (!o.init_from_hf.empty()) {  // every rank reads its parts of the same whole tensors
    tenax::StateDict weights;
    tenax::add_module_state(weights, *model, "",
                            [m = model](const std::string& name) { return m->whole_name(name); });
    load_hf_weights(weights, o.init_from_hf);
  }
  if (o.fsdp) {
    fsdp = std::make_unique<tenax::FullyShardedDataParallel>(
        model.ptr(), model->layer_modules(), mesh->dp(),
        tenax::FullyShardedOptions().prefetch_next(o.fsdp_prefetch).reduce_in(o.reduce_dtype));
    auto* f = fsdp.get();
    model->set_layer_runner(
        [f](size_t k, const std::function<torch::Tensor()>& fn) { return f->run_unit(k, fn); });
  } else if (o.dp > 1 && !o.distributed_optimizer) {
    // Every rank drew the same weights from the seed (model.h): no broadcast needed.
    ddp = std::make_unique<tenax::DataParallel>(
        model.ptr(), mesh->dp(),
        tenax::DataParallelOptions().reduce_in(o.reduce_dtype).broadcast_from_rank0(false));
  }
  accumulation = o.global_batch / (o.micro_batch * o.dp);
  if (o.pp > 1) {
    schedule = std::make_unique<tenax::PipelineSchedule>(
        mesh->pp(),
        o.virtual_stages > 1       ? tenax::PipelineScheduleKind::kInterleaved1F1B
        : o.pp_schedule == "gpipe" ? tenax::PipelineScheduleKind::kGPipe
                                   : tenax::PipelineScheduleKind::k1F1B,
        static_cast<int>(accumulation), o.virtual_stages);
  }
  // Weight decay on matrices only, not on norm gains (as Megatron and nanoGPT do).
  std::vector<torch::Tensor> decay, no_decay;
  for (auto& p : trained_parameters()) (p.dim() >= 2 ? decay : no_decay).push_back(p);
  auto adamw = [&](double wd) {
    return std::make_unique<torch::optim::AdamWOptions>(
        torch::optim::AdamWOptions(o.lr).betas({o.beta1, o.beta2}).weight_decay(wd));
  };
  if (o.distributed_optimizer) {  // a flat shard per group: [0] decayed, [1] the norm gains
    zero.push_back(std::make_unique<tenax::ZeroAdamW>(decay, mesh->dp(), *adamw(o.weight_decay)));
    zero.push_back(std::make_unique<tenax::ZeroAdamW>(no_decay, mesh->dp(), *adamw(0.0)));
  } else {
    std::vector<torch::optim::OptimizerParamGroup> groups;
    groups.emplace_back(decay, adamw(o.weight_decay));
    groups.emplace_back(no_decay, adamw(0.0));
    optimizer = std::make_unique<torch::optim::AdamW>(groups, *adamw(o.weight_decay));
  }
  if (o.loss_scale) scaler = std::make_unique<tenax::LossScaler>(*o.loss_scale);
  train = std::make_unique<SampleLoader>(std::make_shared<TokenFile>(o.data, o.token_bytes),
                                         o.seq_len, o.seed);
  if (!o.val_data.empty()) {
    val = std::make_unique<SampleLoader>(std::make_shared<TokenFile>(o.val_data, o.token_bytes),
                                         o.seq_len, o.seed);
  }
}

std::vector<torch::Tensor> Trainer::Impl::trained_parameters() const {
  if (!zero.empty()) return {zero[0]->shard(), zero[1]->shard()};
  return fsdp ? fsdp->parameters() : model->parameters();
}

bool Trainer::Impl::replicated_across_tp(size_t i, const torch::Tensor& p) const {
  if (!zero.empty()) return i == 1;  // the norm gains' shard
  return model->replicated_across_tp(fsdp ? fsdp->sharded_parameters()[i].param : p);
}

void Trainer::Impl::set_lr(double lr) {
  for (auto& z : zero) z->shard_optimizer().param_groups()[0].options().set_lr(lr);
  if (!optimizer) return;
  for (auto& group : optimizer->param_groups()) group.options().set_lr(lr);
}

void Trainer::Impl::zero_grad() {
  for (auto& z : zero) z->zero_grad();
  if (optimizer) optimizer->zero_grad();
}

void Trainer::Impl::optimizer_step() {
  for (auto& z : zero) z->step();
  if (optimizer) optimizer->step();
}

torch::Tensor Trainer::Impl::run_forward(const std::function<torch::Tensor()>& fn) {
  return fsdp ? fsdp->forward(fn) : fn();
}

torch::Tensor Trainer::Impl::load(const SampleLoader& loader,
                                  const std::vector<int64_t>& samples) const {
  const int64_t width = loader.seq_len() + 1;
  auto tokens = torch::empty({int64_t(samples.size()), width}, torch::kLong);
  int64_t* out = tokens.data_ptr<int64_t>();
  for (size_t i = 0; i < samples.size(); ++i) loader.sample(samples[i], out + i * width);
  return tokens;
}

double Trainer::Impl::accumulate_gradients(const torch::Tensor& tokens) {
  const int64_t t = o.seq_len;
  auto inputs = tokens.narrow(1, 0, t).to(device);
  auto targets = tokens.narrow(1, 1, t).to(device);
  if (schedule) {
    // The schedule runs one backward per micro-batch: average across dp once, after it.
    double loss;
    {
      std::optional<tenax::DataParallel::NoSync> hold;
      if (ddp) hold.emplace(*ddp);
      loss = schedule->run(
          [&](int chunk, const torch::Tensor& x) {
            tenax::Autocast compute(device.type(), o.dtype);
            return run_forward([&] { return model->forward_chunk(chunk, x); });
          },
          inputs, targets,
          [&](const torch::Tensor& y, const torch::Tensor& target) {
            tenax::Autocast compute(device.type(), o.dtype);
            auto loss = model->loss(y, target);
            return scaler ? scaler->scale(loss) : loss;
          });
    }
    if (ddp) ddp->sync();
    if (fsdp) fsdp->sync();
    return scaler ? loss / scaler->scale_value() : loss;
  }
  double total = 0;
  for (int64_t m = 0; m < accumulation; ++m) {
    auto x = inputs.narrow(0, m * o.micro_batch, o.micro_batch);
    auto y = targets.narrow(0, m * o.micro_batch, o.micro_batch);
    std::optional<tenax::DataParallel::NoSync> hold;
    if (ddp && m + 1 < accumulation) hold.emplace(*ddp);  // the last backward averages the sum
    torch::Tensor loss;
    {
      tenax::Autocast compute(device.type(), o.dtype);  // forward only, as autocast wants
      loss = model->loss(run_forward([&] { return model->forward(x); }), y) / double(accumulation);
    }
    // Fault specs count steps from 1; a nan fault belongs to a batch (a skipped one is gone).
    const int64_t fault_step = step + skipped + 1;
    if (o.faults && o.faults->nan_at(fault_step) && m == 0) {
      loss = loss * std::numeric_limits<double>::quiet_NaN();
    }
    if (o.faults && m == 0) {
      // Runs inside the backward pass, on autograd's thread.
      const tenax::FaultInjector* f = o.faults;
      loss.register_hook([f, fault_step](const torch::Tensor& g) {
        f->in_backward(fault_step);
        return g;
      });
    }
    (scaler ? scaler->scale(loss) : loss).backward();
    total += loss.item<double>();
  }
  if (fsdp) fsdp->sync();
  return total;
}

bool Trainer::Impl::discard(StepStats& s) {
  const bool finite = std::isfinite(s.loss) && std::isfinite(s.grad_norm);
  const bool spike = o.loss_spike > 0 && loss_count >= 10 && s.loss > o.loss_spike * loss_mean;
  if ((finite && !spike) || o.nan_policy == tenax::NonFinitePolicy::kOff) {
    if (finite) {
      ++loss_count;
      loss_mean += (s.loss - loss_mean) / static_cast<double>(std::min<int64_t>(loss_count, 50));
    }
    return false;
  }
  // Every rank sees the same loss (averaged over dp) and norm (summed over tp and pp, of
  // gradients averaged over dp): they all decide alike.
  const std::string what = "step " + std::to_string(step + 1) + ": loss " + std::to_string(s.loss) +
                           ", gradient norm " + std::to_string(s.grad_norm) +
                           (spike ? " (a loss spike)" : "");
  tenax::metrics::registry()
      .family("tenax_health_bad_steps_total",
              "Steps whose loss or gradient norm was not finite or spiked, by action",
              tenax::metrics::Type::kCounter, {"action"})
      .counter({tenax::to_string(o.nan_policy)})
      .inc();
  zero_grad();
  if (o.nan_policy == tenax::NonFinitePolicy::kRollback) {
    skip_at = step;
    throw tenax::StepRollback(what + ": rolling back to the last snapshot and skipping its batch");
  }
  tenax::log(tenax::LogLevel::kWarning, what + ": update discarded (nan policy skip)");
  s.skipped = true;
  return true;
}

double Trainer::Impl::clip_gradients() {
  // Squared norm of this rank's gradients; tp-replicated ones are counted on tp rank 0 only,
  // then the sum over tp and pp covers every parameter of the model once.
  // Sharded (fsdp or the distributed optimizer), each dp rank holds a disjoint part of the
  // gradients: sum over dp as well.
  auto sq = torch::zeros({1}, torch::dtype(torch::kFloat64).device(device));
  const auto params = trained_parameters();
  for (size_t i = 0; i < params.size(); ++i) {
    const auto& p = params[i];
    if (!p.grad().defined()) continue;
    if (mesh->tp_rank() != 0 && replicated_across_tp(i, p)) continue;
    sq += p.grad().to(torch::kFloat64).pow(2).sum();
  }
  if (fsdp || !zero.empty()) mesh->dp()->all_reduce(sq);
  mesh->tp()->all_reduce(sq);
  mesh->pp()->all_reduce(sq);
  const double norm = std::sqrt(sq.item<double>());
  if (o.clip > 0 && norm > o.clip) {
    const double scale = o.clip / (norm + 1e-6);
    torch::NoGradGuard no_grad;
    for (auto& p : params) {
      if (p.grad().defined()) p.grad().mul_(scale);
    }
  }
  return norm;
}

bool Trainer::Impl::unscale_gradients(StepStats& s) {
  s.loss_scale = scaler->scale_value();
  // dp too: gradients are averaged over it already, but a sharded optimizer's are not.
  const bool finite =
      scaler->unscale(trained_parameters(), {mesh->dp().get(), mesh->tp().get(), mesh->pp().get()});
  scaler->update(finite);
  auto& reg = tenax::metrics::registry();
  reg.gauge("tenax_train_loss_scale", "The loss scale of the next step's backward")
      .set(scaler->scale_value());
  if (finite) return true;
  reg.counter("tenax_train_overflow_steps_total",
              "Steps skipped because their scaled gradients overflowed")
      .inc();
  zero_grad();
  s.overflow = s.skipped = true;
  char line[160];
  std::snprintf(line, sizeof line,
                "step %lld: gradients overflowed at loss scale %g: update skipped, scale now %g",
                static_cast<long long>(step + 1), s.loss_scale, scaler->scale_value());
  tenax::log(tenax::LogLevel::kWarning, line);
  return false;
}

StepStats Trainer::Impl::train_step() {
  using Clock = std::chrono::steady_clock;
  const auto start = Clock::now();
  const auto comm_start = tenax::communication_wait_time();
  StepStats s;
  s.step = step;
  s.tokens = o.global_batch * o.seq_len;
  s.lr = learning_rate(o, step);
  set_lr(s.lr);
  zero_grad();
  if (skip_at == step) {  // rolled back to before this step: its batch is skipped
    ++skipped;
    skip_at = -1;
  }
  auto tokens = load(*train, SampleLoader::rank_samples((step + skipped) * o.global_batch,
                                                        o.global_batch, mesh->dp_rank(), o.dp));
  auto loss = torch::full({1}, accumulate_gradients(tokens),
                          torch::dtype(torch::kFloat64).device(device));
  for (auto& z : zero) z->reduce_gradients();  // each rank's part of the averages
  mesh->dp()->all_reduce(loss, tenax::ReduceOp::kAvg);
  s.loss = loss.item<double>();
  const bool finite = !scaler || unscale_gradients(s);  // an overflow skips the step
  s.grad_norm = finite ? clip_gradients() : std::numeric_limits<double>::infinity();
  if (finite && !discard(s)) {
    optimizer_step();
    if (o.faults && o.faults->corrupt_at(step + 1)) {
      // sdc@S: one parameter of this replica silently changes.
      torch::NoGradGuard no_grad;
      auto p = trained_parameters().front();
      p.view(-1)[0].add_(1e-3);
      std::fprintf(stderr,
                   "llama_train: fault injection: sdc: a parameter of this replica "
                   "changed after step %lld\n",
                   (long long)(step + 1));
    }
  }
  ++step;
  s.seconds = std::chrono::duration<double>(Clock::now() - start).count();
  s.comm_seconds =
      std::chrono::duration<double>(tenax::communication_wait_time() - comm_start).count();
  return s;
}

double Trainer::Impl::evaluate(int batches) {
  if (!val) return std::numeric_limits<double>::quiet_NaN();
  torch::NoGradGuard no_grad;
  const int64_t t = o.seq_len, b = o.micro_batch;
  constexpr uint32_t kEvalTag = 1u << 20;  // apart from the pipeline schedule's tags
  double total = 0;
  tenax::Autocast compute(device.type(), o.dtype);
  for (int i = 0; i < batches; ++i) {
    // Evaluation always reads the first samples of the file, split across dp ranks.
    auto tokens = load(*val, SampleLoader::rank_samples(i * b * o.dp, b * o.dp,
                                                        mesh->dp_rank(), o.dp));
    auto x = tokens.narrow(1, 0, t).to(device), y = tokens.narrow(1, 1, t).to(device);
    auto& pp = *mesh->pp();
    const int p = pp.size(), last = o.virtual_stages * p - 1;
    // Between stages: [b, t, dim] fp32, or this rank's positions under sequence parallelism.
    const int64_t positions = model->sequence_parallel() ? t / o.tp : t;
    auto loss = torch::zeros({1}, torch::dtype(torch::kFloat64).device(device));
    // Through the virtual stages in order: chunk c of rank s is stage c·p + s.
    for (int c = 0; c < o.virtual_stages; ++c) {
      const int vs = c * p + pp.rank();
      torch::Tensor h;
      if (vs == 0) {
        h = run_forward([&] { return model->forward_chunk(c, x); });
      } else {
        auto in =
            torch::empty({b, positions, o.model.dim}, torch::dtype(torch::kFloat32).device(device));
        pp.recv(in, (vs - 1) % p, kEvalTag);
        h = run_forward([&] { return model->forward_chunk(c, in); });
      }
      if (vs == last) {
        loss += model->loss(h, y).item<double>();
      } else {
        pp.send(h.to(torch::kFloat32).contiguous(), (vs + 1) % p, kEvalTag);
      }
    }
    pp.broadcast(loss, pp.size() - 1);
    total += loss.item<double>();
  }
  auto mean = torch::full({1}, total / batches, torch::dtype(torch::kFloat64).device(device));
  mesh->dp()->all_reduce(mean, tenax::ReduceOp::kAvg);
  return mean.item<double>();
}

Trainer::Trainer(const TrainOptions& options, std::shared_ptr<tenax::Communicator> world)
    : impl_(std::make_unique<Impl>(options, std::move(world))) {}
Trainer::~Trainer() = default;
StepStats Trainer::train_step() { return impl_->train_step(); }
double Trainer::evaluate(int batches) {
  const auto start = std::chrono::steady_clock::now();
  tenax::PhaseScope evaluating(tenax::Phase::kEvaluation);
  const double loss = impl_->evaluate(batches);
  tenax::account_time(
      tenax::TimeUse::kEvaluation,
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  return loss;
}
int64_t Trainer::step() const { return impl_->step; }

tenax::StateDict& Trainer::state() {
  auto& i = *impl_;
  if (!i.checkpoint_state) {
    i.checkpoint_state = std::make_unique<tenax::StateDict>();
    // A pipeline rank's layer k is some layer of the whole model (its chunks' layers).
    tenax::NameMap rename = [model = i.model](const std::string& name) {
      return model->whole_name(name);
    };
    if (!i.zero.empty()) {  // whole weights; each rank's part of the flat moments
      tenax::add_module_state(*i.checkpoint_state, *i.model, "model.", rename);
      tenax::add_zero_adamw_state(*i.checkpoint_state, *i.zero[0], "zero.decay.");
      tenax::add_zero_adamw_state(*i.checkpoint_state, *i.zero[1], "zero.norms.");
    } else if (i.fsdp) {  // this rank's rows of each parameter and moment
      tenax::add_module_state(*i.checkpoint_state, *i.fsdp, "model.", rename);
      tenax::add_adamw_state(*i.checkpoint_state, *i.optimizer, *i.fsdp, "optim.", rename);
    } else {
      tenax::add_module_state(*i.checkpoint_state, *i.model, "model.", rename);
      tenax::add_adamw_state(*i.checkpoint_state, *i.optimizer, *i.model, "optim.", rename);
    }
    i.rename = rename;
    // How `tenax-ckpt export --format hf` writes the model for transformers.
    i.checkpoint_state->set_blob(kHfExportBlob,
                                 hf_export_description(i.o.model, i.o.seq_len, "model."));
  }
  if (!i.zero.empty()) {
    tenax::record_zero_adamw_step(*i.checkpoint_state, *i.zero[0], "zero.decay.");
    tenax::record_zero_adamw_step(*i.checkpoint_state, *i.zero[1], "zero.norms.");
  } else if (i.fsdp) {
    tenax::record_adamw_steps(*i.checkpoint_state, *i.optimizer, *i.fsdp, "optim.", i.rename);
  } else {
    tenax::record_adamw_steps(*i.checkpoint_state, *i.optimizer, *i.model, "optim.", i.rename);
  }
  i.checkpoint_state->set_int("step", i.step);
  i.checkpoint_state->set_int("cursor", (i.step + i.skipped) * i.o.global_batch);
  i.checkpoint_state->set_int("skipped", i.skipped);
  if (i.scaler) i.checkpoint_state->set_blob("loss_scaler", i.scaler->state());
  return *i.checkpoint_state;
}

void Trainer::resume_from_state() {
  auto& i = *impl_;
  if (!i.zero.empty()) {
    tenax::apply_zero_adamw_state(*i.checkpoint_state, *i.zero[0], "zero.decay.");
    tenax::apply_zero_adamw_state(*i.checkpoint_state, *i.zero[1], "zero.norms.");
  } else if (i.fsdp) {
    i.fsdp->reshard();  // the next forward gathers the restored shards
    tenax::apply_adamw_steps(*i.checkpoint_state, *i.optimizer, *i.fsdp, "optim.", i.rename);
  } else {
    tenax::apply_adamw_steps(*i.checkpoint_state, *i.optimizer, *i.model, "optim.", i.rename);
  }
  i.step = i.checkpoint_state->get_int("step");
  const auto& ints = i.checkpoint_state->ints();
  i.skipped = ints.count("skipped") ? ints.at("skipped") : 0;
  const auto& blobs = i.checkpoint_state->blobs();
  if (i.scaler && blobs.count("loss_scaler")) i.scaler->restore(blobs.at("loss_scaler"));
  if (i.checkpoint_state->get_int("cursor") != (i.step + i.skipped) * i.o.global_batch) {
    throw tenax::ConfigError("the checkpoint's data cursor " +
                             std::to_string(i.checkpoint_state->get_int("cursor")) +
                             " is not step x --global-batch: resume with the same --global-batch");
  }
}
int64_t Trainer::parameter_count() const { return llama::parameter_count(impl_->o.model); }
const TrainOptions& Trainer::options() const { return impl_->o; }

}  // namespace llama
