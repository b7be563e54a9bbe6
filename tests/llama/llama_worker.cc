// One rank of a multi-process llama_train test.
// Usage: llama_worker DATA DP TP PP [SCHEDULE [RECOMPUTE [sp|nosp [fsdp|zero2]]]]; SCHEDULE 1f1b,
// gpipe or interleavedV (1f1b with V model chunks a rank). Runs two optimizer steps of the tiny
// preset on the dp x tp x pp mesh (recomputing as RECOMPUTE says, with sequence parallelism given
// "sp") and, in the same process, on one rank alone without recomputation (same seed, same global
// batch); the losses, gradient norms and every weight shard's gradient must agree to 1e-5, and the
// weights to 1e-5 plus AdamW's rounding amplification (see below). With "fsdp" the mesh's dp is
// fully sharded: 20 steps, each rank's shards against the matching rows of the one-process weights,
// and the bytes of weights, gradients and AdamW state this rank holds against 1/dp of its unsharded
// share. With "zero2", the distributed optimizer (ZeroAdamW): 20 steps, whole weights compared,
// AdamW state 1/dp. Prints "PASS llama" and exits 0 when every check holds.
// Usage: llama_worker hf HF_DIR TOKENS SEQ_LEN OUT: see hf_logits below.

#include <torch/torch.h>

#include <cstdio>
#include <fstream>
#include <iostream>

#include "data.h"
#include "hf.h"
#include "hf_weights.h"
#include "support/worker_check.h"
#include "tenax/checkpoint/module_state.h"
#include "tenax/parallel/zero.h"
#include "tenax/tenax.h"
#include "trainer_impl.h"

namespace {

using llama::Trainer;

// This rank's shard of a whole tensor: the one dimension whose size differs is split by tp.
torch::Tensor shard_of(const torch::Tensor& whole, const torch::Tensor& shard, int tp_rank) {
  for (int64_t d = 0; d < whole.dim(); ++d) {
    if (whole.size(d) != shard.size(d)) {
      return whole.narrow(d, tp_rank * shard.size(d), shard.size(d));
    }
  }
  return whole;
}

// Each fully sharded rank's shards against the same rows of the one-process tensors (gradients
// after the first step; weights after every step, with AdamW's rounding amplification allowed
// for each step taken). Returns the number of tensors compared.
int compare_shards(llama::Trainer::Impl& p,
                   const torch::OrderedDict<std::string, torch::Tensor>& whole, int step, int steps,
                   double lr, int rank) {
  int compared = 0;
  for (const auto& sp : p.fsdp->sharded_parameters()) {
    const std::string name = p.model->whole_name(sp.name);
    const torch::Tensor* ref = whole.find(name);
    CHECK(ref != nullptr, "no parameter " << name << " in the one-process model");
    if (!ref) continue;
    const int64_t rows = sp.shard.size(0);
    auto expected = shard_of(*ref, sp.param, p.mesh->tp_rank()).narrow(0, sp.row_offset, rows);
    CHECK(expected.sizes() == sp.shard.sizes(), name << " shard shape " << sp.shard.sizes());
    if (expected.sizes() != sp.shard.sizes() || rows == 0) continue;
    if (step == 0) {
      auto expected_grad =
          shard_of(ref->grad(), sp.param, p.mesh->tp_rank()).narrow(0, sp.row_offset, rows);
      const double gdiff = (expected_grad - sp.shard.grad()).abs().max().item<double>();
      const double gscale = std::max(1e-12, expected_grad.abs().max().item<double>());
      CHECK(gdiff <= 1e-5 * gscale, name << " gradient shard differs by " << gdiff << " of "
                                         << gscale << " (rank " << rank << ")");
    }
    const double diff = (expected - sp.shard).abs().max().item<double>();
    const double scale = std::max(1.0, expected.abs().max().item<double>());
    CHECK(diff <= 1e-5 * scale + 0.02 * lr * (step + 1),
          "step " << step << " of " << steps << ": " << name << " shard differs by " << diff
                  << " (rank " << rank << ")");
    ++compared;
  }
  return compared;
}

// Weights + gradients + AdamW moments this rank holds, measured on the tensors, against 1/dp of
// the same for its unsharded parameters (4 fp32 copies of each).
void check_state_bytes(llama::Trainer::Impl& p, int rank) {
  int64_t unsharded = 0, grads = 0;
  for (const auto& sp : p.fsdp->sharded_parameters()) {
    unsharded += 4 * sp.param.numel() * static_cast<int64_t>(sp.param.element_size());
    if (sp.shard.grad().defined()) grads += static_cast<int64_t>(sp.shard.grad().nbytes());
  }
  const int64_t held = p.fsdp->parameter_bytes() + grads + tenax::adamw_state_bytes(*p.optimizer);
  const double ratio = double(held) / (double(unsharded) / p.o.dp);
  std::cout << "rank " << rank << " holds " << held << " bytes of state, unsharded " << unsharded
            << ": " << ratio << " x 1/dp" << std::endl;
  CHECK(ratio > 0.85 && ratio < 1.15, "rank " << rank << " holds " << held << " bytes, not about 1/"
                                              << p.o.dp << " of " << unsharded);
}

// The distributed optimizer's AdamW moments on this rank against 1/dp of two fp32 copies of
// the rank's parameters.
void check_optimizer_bytes(llama::Trainer::Impl& p, int rank) {
  int64_t unsharded = 0, held = 0;
  for (const auto& t : p.model->parameters()) unsharded += 2 * t.numel() * 4;
  for (const auto& z : p.zero) held += z->state_bytes();
  const double ratio = double(held) / (double(unsharded) / p.o.dp);
  std::cout << "rank " << rank << " holds " << held << " bytes of AdamW state: " << ratio
            << " x 1/dp" << std::endl;
  CHECK(ratio > 0.95 && ratio < 1.05, "rank " << rank << " holds " << held << " bytes of AdamW "
                                              << "state, not about 1/" << p.o.dp << " of "
                                              << unsharded);
}

// Mode "hf": the Hugging Face Llama in HF_DIR loaded into one rank's model, its fp32 logits of
// the windows of TOKENS (seq_len + 1 tokens each, overlapping by one, as llama_train reads
// them) written to OUT as [windows, seq_len, vocab] floats; prints "loss L" over all windows.
int hf_logits(const std::string& dir, const std::string& tokens_path, int64_t t,
              const std::string& out, const tenax::World& w) {
  const llama::LlamaConfig c = llama::config_from_hf(dir);
  llama::Llama model(c, t, w.comm);
  tenax::StateDict weights;
  tenax::add_module_state(weights, *model);
  llama::load_hf_weights(weights, dir);
  llama::TokenFile file(tokens_path, 2);
  const int64_t n = (file.size() - 1) / t;
  auto batch = torch::empty({n, t + 1}, torch::kInt64);
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t k = 0; k <= t; ++k) batch[i][k] = file.at(i * t + k);
  }
  torch::NoGradGuard no_grad;
  auto logits = model->forward(batch.narrow(1, 0, t)).contiguous();
  const double loss = model->loss(logits, batch.narrow(1, 1, t)).item<double>();
  std::ofstream f(out, std::ios::binary | std::ios::trunc);
  f.write(static_cast<const char*>(logits.data_ptr()), static_cast<std::streamsize>(logits.nbytes()));
  CHECK(static_cast<bool>(f), "cannot write " << out);
  std::printf("loss %.8f\n", loss);
  return tenax::testing::worker_exit("llama");
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 5) return 2;
  try {
    tenax::World w = tenax::init();
    if (std::string(argv[1]) == "hf" && argc == 6) {
      return hf_logits(argv[2], argv[3], std::stoll(argv[4]), argv[5], w);
    }
    llama::TrainOptions o;
    o.model = llama::preset("tiny");
    o.data = argv[1];
    o.dp = std::stoi(argv[2]), o.tp = std::stoi(argv[3]), o.pp = std::stoi(argv[4]);
    if (argc > 5) o.pp_schedule = argv[5];
    if (o.pp_schedule.rfind("interleaved", 0) == 0) {  // "interleavedV": V chunks a rank
      o.virtual_stages = std::stoi(o.pp_schedule.substr(11));
      o.pp_schedule = "1f1b";
    }
    const std::string sharding = argc > 8 ? argv[8] : "";
    const bool fsdp = sharding == "fsdp", zero2 = sharding == "zero2";
    const int steps = fsdp || zero2 ? 20 : 2;
    o.micro_batch = 2, o.global_batch = o.dp == 3 ? 12 : 8, o.seq_len = 32, o.steps = steps;
    o.warmup = 1;
    o.fsdp = fsdp;
    o.distributed_optimizer = zero2;
    o.lr = 1e-3;
    llama::TrainOptions solo_options = o;
    solo_options.dp = solo_options.tp = solo_options.pp = solo_options.virtual_stages = 1;
    solo_options.fsdp = solo_options.distributed_optimizer = false;
    if (argc > 6) o.recompute = tenax::parse_recompute(argv[6], "RECOMPUTE");
    if (argc > 7) o.sequence_parallel = std::string(argv[7]) == "sp";

    Trainer parallel(llama::resolve_options(o, w.size), w.comm);
    tenax::CommOptions solo_comm;
    solo_comm.name = "solo-" + std::to_string(w.rank);
    Trainer solo(llama::resolve_options(solo_options, 1),
                 tenax::create_communicator(tenax::Backend::kGloo, w.store, 0, 1, solo_comm));

    auto& p = parallel.impl();
    int compared = 0;
    for (int step = 0; step < steps; ++step) {
      auto a = parallel.train_step();
      auto b = solo.train_step();
      CHECK(std::abs(a.loss - b.loss) <= 1e-5 * std::abs(b.loss),
            "step " << step << " loss " << a.loss << " vs one process " << b.loss);
      CHECK(std::abs(a.grad_norm - b.grad_norm) <= 1e-5 * b.grad_norm,
            "step " << step << " grad norm " << a.grad_norm << " vs " << b.grad_norm);
      auto whole = solo.impl().model->named_parameters();
      if (fsdp) {
        compared += compare_shards(p, whole, step, steps, o.lr, w.rank);
        continue;
      }
      for (const auto& item : p.model->named_parameters()) {
        const std::string name = p.model->whole_name(item.key());
        const torch::Tensor* ref = whole.find(name);
        CHECK(ref != nullptr, "no parameter " << name << " in the one-process model");
        if (!ref) continue;
        auto expected = shard_of(*ref, item.value(), p.mesh->tp_rank());
        CHECK(expected.sizes() == item.value().sizes(), name << " shape " << item.value().sizes());
        if (expected.sizes() != item.value().sizes()) continue;
        if (step == 0 && !zero2) {  // (ZeroAdamW averages into its shards, not these)
          // The step's computation, from equal weights: this shard's (clipped) gradient equals
          // the slice of the one-process gradient.
          auto expected_grad = shard_of(ref->grad(), item.value().grad(), p.mesh->tp_rank());
          const double gdiff = (expected_grad - item.value().grad()).abs().max().item<double>();
          const double gscale = std::max(1e-12, expected_grad.abs().max().item<double>());
          CHECK(gdiff <= 1e-5 * gscale, name << " gradient differs by " << gdiff << " of "
                                             << gscale << " (rank " << w.rank << ")");
        }
        // The weights: AdamW's first updates are lr * g / (|g| + eps), which turns rounding in
        // a gradient element near eps = 1e-8 into a visible fraction of lr; allow 2% of a step.
        const double diff = (expected - item.value()).abs().max().item<double>();
        const double scale = std::max(1.0, expected.abs().max().item<double>());
        CHECK(diff <= 1e-5 * scale + 0.02 * o.lr,
              "step " << step << ": " << name << " differs by " << diff << " (rank " << w.rank
                      << ")");
        ++compared;
      }
    }
    CHECK(compared > 0, "no parameters compared");
    if (fsdp) check_state_bytes(p, w.rank);
    if (zero2) check_optimizer_bytes(p, w.rank);
    std::cout << "rank " << w.rank << " compared " << compared << " tensors" << std::endl;
    w.comm->barrier();
  } catch (const std::exception& e) {
    std::cout << "ERROR: " << e.what() << std::endl;
    return 1;
  }
  return tenax::testing::worker_exit("llama");
}
