// One rank of a multi-process parallelism test. Usage: parallel_worker SCENARIO
// Each rank also trains the single-process reference itself (same seed, whole batch) and
// compares. Prints "PASS <scenario>" and exits 0 when every check holds.

#include <torch/torch.h>

#include <cmath>
#include <functional>
#include <iostream>
#include <map>

#include "support/worker_main.h"
#include "tenax/parallel/data_parallel.h"
#include "tenax/parallel/loss_scaler.h"
#include "tenax/parallel/mesh.h"
#include "tenax/parallel/mixed_precision.h"
#include "tenax/parallel/pipeline.h"
#include "tenax/parallel/tensor_parallel.h"
#include "tenax/parallel/zero.h"
#include "tenax/tenax.h"

using namespace tenax;

namespace {


struct NetImpl : torch::nn::Module {
  explicit NetImpl(bool with_unused) {
    fc1 = register_module("fc1", torch::nn::Linear(16, 64));
    fc2 = register_module("fc2", torch::nn::Linear(64, 32));
    fc3 = register_module("fc3", torch::nn::Linear(32, 4));
    if (with_unused) unused = register_module("unused", torch::nn::Linear(4, 4));
  }
  torch::Tensor forward(const torch::Tensor& x) {
    return fc3(torch::tanh(fc2(torch::tanh(fc1(x)))));
  }
  torch::nn::Linear fc1{nullptr}, fc2{nullptr}, fc3{nullptr}, unused{nullptr};
};
TORCH_MODULE(Net);

constexpr int kGlobalBatch = 24;
constexpr int kSteps = 20;

std::pair<torch::Tensor, torch::Tensor> batch(int step) {
  torch::manual_seed(1000 + step);
  return {torch::randn({kGlobalBatch, 16}), torch::randn({kGlobalBatch, 4})};
}

Net make_net(bool with_unused = false) {
  torch::manual_seed(42);
  return Net(with_unused);
}

double rel_diff(const torch::Tensor& a, const torch::Tensor& b) {
  return ((a - b).abs().max() / (b.abs().max() + 1e-12)).item<double>();
}

// Trains the reference on the whole batch; returns per-step losses.
std::vector<double> train_reference(Net& net) {
  torch::optim::SGD opt(net->parameters(), torch::optim::SGDOptions(0.1).momentum(0.9));
  std::vector<double> losses;
  for (int s = 0; s < kSteps; ++s) {
    auto [x, y] = batch(s);
    opt.zero_grad();
    auto loss = torch::mse_loss(net->forward(x), y);
    loss.backward();
    opt.step();
    losses.push_back(loss.item<double>());
  }
  return losses;
}

void compare_weights(Net& a, Net& b, const std::string& what) {
  auto pa = a->named_parameters(), pb = b->named_parameters();
  for (const auto& p : pa) {
    double d = rel_diff(p.value(), pb[p.key()]);
    CHECK(d < 1e-5, what << ": weight " << p.key() << " differs by " << d << " (relative)");
  }
}

// dp = world size: 20 SGD-with-momentum steps (sensitive to the gradient scale) match the single-process run, losses and final weights.
void scenario_match(World& w, int micro_batches) {
  auto dp = w.comm;
  const int n = dp->size(), r = dp->rank();
  Net ref = make_net();
  std::vector<double> ref_losses = train_reference(ref);

  torch::manual_seed(1234 + r);  // different init per rank: DataParallel must broadcast rank 0's
  Net net(false);
  if (r == 0) net = make_net();
  DataParallel ddp(net.ptr(), dp, DataParallelOptions().first_bucket_cap(2048).bucket_cap(8192));
  torch::optim::SGD opt(net->parameters(), torch::optim::SGDOptions(0.1).momentum(0.9));
  const int local = kGlobalBatch / n, micro = local / micro_batches;
  for (int s = 0; s < kSteps; ++s) {
    auto [x, y] = batch(s);
    x = x.narrow(0, r * local, local);
    y = y.narrow(0, r * local, local);
    opt.zero_grad();
    torch::Tensor total = torch::zeros({});
    for (int m = 0; m < micro_batches; ++m) {
      auto loss = torch::mse_loss(net->forward(x.narrow(0, m * micro, micro)),
                                  y.narrow(0, m * micro, micro)) / micro_batches;
      if (m + 1 < micro_batches) {
        auto guard = ddp.no_sync();
        loss.backward();
      } else {
        loss.backward();
      }
      total += loss.detach();
    }
    opt.step();
    dp->all_reduce(total, ReduceOp::kAvg);
    double d = std::abs(total.item<double>() - ref_losses[s]) / std::abs(ref_losses[s]);
    CHECK(d < 1e-5, "step " << s << " loss " << total.item<double>() << " vs reference "
                             << ref_losses[s]);
  }
  compare_weights(net, ref, "dp=" + std::to_string(n));
  CHECK(ddp.num_buckets() > 1, "expected several buckets, got " << ddp.num_buckets());
  CHECK(ddp.buckets_started_during_backward() >= 1,
         "no bucket started before the end of backward");
  std::cout << "dp=" << n << " micro_batches=" << micro_batches << " buckets=" << ddp.num_buckets()
            << " started during backward=" << ddp.buckets_started_during_backward() << std::endl;
}

// Sharded AdamW (ZeRO): 20 steps match the single-process AdamW run, and each rank holds
// 1/dp of the optimizer state (measured on the state tensors).
void scenario_zero(World& w) {
  auto dp = w.comm;
  const int n = dp->size(), r = dp->rank();
  const auto adamw = torch::optim::AdamWOptions(1e-2).weight_decay(0.05);
  Net ref = make_net();
  torch::optim::AdamW ref_opt(ref->parameters(), adamw);
  torch::manual_seed(99 + r);
  Net net(false);
  if (r == 0) net = make_net();
  ZeroAdamW opt(net->parameters(), dp, adamw);
  const int local = kGlobalBatch / n;
  for (int s = 0; s < kSteps; ++s) {
    auto [x, y] = batch(s);
    ref_opt.zero_grad();
    auto ref_loss = torch::mse_loss(ref->forward(x), y);
    ref_loss.backward();
    ref_opt.step();
    opt.zero_grad();
    auto loss = torch::mse_loss(net->forward(x.narrow(0, r * local, local)),
                                y.narrow(0, r * local, local));
    loss.backward();
    opt.step();
    auto total = loss.detach().clone();
    dp->all_reduce(total, ReduceOp::kAvg);
    double d = std::abs(total.item<double>() - ref_loss.item<double>()) /
               std::abs(ref_loss.item<double>());
    CHECK(d < 1e-5, "step " << s << " loss " << total.item<double>() << " vs "
                             << ref_loss.item<double>());
  }
  compare_weights(net, ref, "sharded dp=" + std::to_string(n));
  const int64_t full = adamw_state_bytes(ref_opt), mine = opt.state_bytes();
  const int64_t want = 2 * opt.shard_numel() * 4;
  CHECK(full == 2 * opt.total_numel() * 4, "unsharded AdamW state " << full << " bytes");
  CHECK(mine == want, "sharded state " << mine << " bytes, want " << want);
  CHECK(mine * n < full + 2 * 4 * n, "sharded state is not 1/dp: " << mine << " x " << n
                                                                    << " vs " << full);
  std::cout << "optimizer state per rank: " << mine << " bytes sharded vs " << full
            << " unsharded (dp=" << n << ")" << std::endl;
}

// tp = world size: embedding -> column -> tanh -> row -> column (vocab-split logits) ->
// vocab-parallel cross-entropy; 20 SGD steps match the same model built with torch::nn layers
// on one process, losses and every rank's weight shard.
void scenario_tp(World& w) {
  auto tp = w.comm;
  const int64_t vocab = 32, dim = 16, hidden = 64;
  torch::manual_seed(42);
  torch::nn::Embedding emb(vocab, dim);
  torch::nn::Linear fc1(dim, hidden), fc2(hidden, dim), head(dim, vocab);
  torch::manual_seed(42);
  VocabParallelEmbedding temb(vocab, dim, tp);
  ColumnParallelLinear tfc1(dim, hidden, tp);
  RowParallelLinear tfc2(hidden, dim, tp);
  ColumnParallelLinear thead(dim, vocab, tp);
  std::vector<torch::Tensor> ref_params, tp_params;
  for (auto* m : std::initializer_list<torch::nn::Module*>{emb.get(), fc1.get(), fc2.get(), head.get()}) {
    for (auto& p : m->parameters()) ref_params.push_back(p);
  }
  for (auto* m : std::initializer_list<torch::nn::Module*>{temb.get(), tfc1.get(), tfc2.get(), thead.get()}) {
    for (auto& p : m->parameters()) tp_params.push_back(p);
  }
  torch::optim::SGD ref_opt(ref_params, torch::optim::SGDOptions(0.1).momentum(0.9));
  torch::optim::SGD tp_opt(tp_params, torch::optim::SGDOptions(0.1).momentum(0.9));
  for (int s = 0; s < kSteps; ++s) {
    torch::manual_seed(2000 + s);
    auto ids = torch::randint(0, vocab, {24});
    auto targets = torch::randint(0, vocab, {24});
    ref_opt.zero_grad();
    auto ref_loss = torch::nn::functional::cross_entropy(
        head(fc2(torch::tanh(fc1(emb(ids))))), targets);
    ref_loss.backward();
    ref_opt.step();
    tp_opt.zero_grad();
    auto loss = vocab_parallel_cross_entropy(thead(tfc2(torch::tanh(tfc1(temb(ids))))), targets, *tp);
    loss.backward();
    tp_opt.step();
    double d = std::abs(loss.item<double>() - ref_loss.item<double>()) / ref_loss.item<double>();
    CHECK(d < 1e-5, "step " << s << " tp loss " << loss.item<double>() << " vs "
                             << ref_loss.item<double>());
  }
  const int k = tp->rank(), n = tp->size();
  auto shard = [&](const torch::Tensor& full, int dim_) {
    int64_t part = full.size(dim_) / n;
    return full.narrow(dim_, k * part, part);
  };
  auto check = [&](const torch::Tensor& mine, const torch::Tensor& want, const char* what) {
    double d = rel_diff(mine, want);
    CHECK(d < 1e-5, what << " differs by " << d);
  };
  check(temb->weight, shard(emb->weight, 0), "embedding");
  check(tfc1->weight, shard(fc1->weight, 0), "column weight");
  check(tfc1->bias, shard(fc1->bias, 0), "column bias");
  check(tfc2->weight, shard(fc2->weight, 1), "row weight");
  check(tfc2->bias, fc2->bias, "row bias");
  check(thead->weight, shard(head->weight, 0), "head weight");
  // gather_output and a row layer that scatters its own input give the full results too.
  torch::manual_seed(7);
  torch::nn::Linear a(dim, hidden);
  torch::manual_seed(7);
  ColumnParallelLinear ta(dim, hidden, tp, /*gather_output=*/true);
  auto x = torch::randn({5, dim});
  check(ta(x), a(x), "gathered column output");
  torch::manual_seed(8);
  torch::nn::Linear b(hidden, dim);
  torch::manual_seed(8);
  RowParallelLinear tb(hidden, dim, tp, /*input_is_parallel=*/false);
  auto h = torch::randn({5, hidden});
  check(tb(h), b(h), "row output from a full input");
  try {
    ColumnParallelLinear bad(dim, 3 * n + 1, tp);
    CHECK(false, "a width tp does not divide was accepted");
  } catch (const ConfigError& e) {
    CHECK(std::string(e.what()).find("does not divide out_features") != std::string::npos, e.what());
  }
}

struct TpNetImpl : torch::nn::Module {
  TpNetImpl(int64_t vocab, int64_t dim, int64_t hidden, std::shared_ptr<Communicator> tp) {
    emb = register_module("emb", VocabParallelEmbedding(vocab, dim, tp));
    fc1 = register_module("fc1", ColumnParallelLinear(dim, hidden, tp));
    fc2 = register_module("fc2", RowParallelLinear(hidden, dim, tp));
    head = register_module("head", ColumnParallelLinear(dim, vocab, tp));
  }
  torch::Tensor forward(const torch::Tensor& ids) {
    return head(fc2(torch::tanh(fc1(emb(ids)))));
  }
  VocabParallelEmbedding emb{nullptr};
  ColumnParallelLinear fc1{nullptr}, head{nullptr};
  RowParallelLinear fc2{nullptr};
};
TORCH_MODULE(TpNet);

// dp=2 x tp=2 on 4 ranks: DataParallel over the mesh's dp groups around tensor-parallel layers
// on its tp groups; 20 SGD steps match the whole-batch single-process model.
void scenario_dp_tp(World& w) {
  ProcessMesh mesh(w.comm, MeshOptions().tensor_parallel(2));
  const int64_t vocab = 32, dim = 16, hidden = 64;
  torch::manual_seed(42);
  torch::nn::Embedding emb(vocab, dim);
  torch::nn::Linear fc1(dim, hidden), fc2(hidden, dim), head(dim, vocab);
  std::vector<torch::Tensor> ref_params;
  for (auto* m : std::initializer_list<torch::nn::Module*>{emb.get(), fc1.get(), fc2.get(), head.get()}) {
    for (auto& p : m->parameters()) ref_params.push_back(p);
  }
  torch::manual_seed(42);
  TpNet net(vocab, dim, hidden, mesh.tp());
  DataParallel ddp(net.ptr(), mesh.dp());
  torch::optim::SGD ref_opt(ref_params, torch::optim::SGDOptions(0.1).momentum(0.9));
  torch::optim::SGD opt(net->parameters(), torch::optim::SGDOptions(0.1).momentum(0.9));
  const int64_t local = kGlobalBatch / mesh.dp_size();
  for (int s = 0; s < kSteps; ++s) {
    torch::manual_seed(3000 + s);
    auto ids = torch::randint(0, vocab, {kGlobalBatch});
    auto targets = torch::randint(0, vocab, {kGlobalBatch});
    ref_opt.zero_grad();
    auto ref_loss = torch::nn::functional::cross_entropy(
        head(fc2(torch::tanh(fc1(emb(ids))))), targets);
    ref_loss.backward();
    ref_opt.step();
    opt.zero_grad();
    auto mine = ids.narrow(0, mesh.dp_rank() * local, local);
    auto loss = vocab_parallel_cross_entropy(net->forward(mine),
                                             targets.narrow(0, mesh.dp_rank() * local, local),
                                             *mesh.tp());
    loss.backward();
    opt.step();
    auto total = loss.detach().clone();
    mesh.dp()->all_reduce(total, ReduceOp::kAvg);
    double d = std::abs(total.item<double>() - ref_loss.item<double>()) / ref_loss.item<double>();
    CHECK(d < 1e-5, "step " << s << " dp x tp loss " << total.item<double>() << " vs "
                             << ref_loss.item<double>());
  }
  const int k = mesh.tp_rank();
  auto shard = [&](const torch::Tensor& full, int d) {
    int64_t part = full.size(d) / mesh.tp_size();
    return full.narrow(d, k * part, part);
  };
  CHECK(rel_diff(net->fc1->weight, shard(fc1->weight, 0)) < 1e-5, "column weight");
  CHECK(rel_diff(net->fc2->weight, shard(fc2->weight, 1)) < 1e-5, "row weight");
  CHECK(rel_diff(net->emb->weight, shard(emb->weight, 0)) < 1e-5, "embedding");
}

// pp = world size: a 4-layer MLP cut into equal stages; PP_SCHEDULE (gpipe|1f1b) with PP_MICRO
// micro-batches; 20 SGD steps match the whole-batch single-process run.
void scenario_pp(World& w) {
  auto pp = w.comm;
  const int p = pp->size(), s = pp->rank();
  const std::string kind = std::getenv("PP_SCHEDULE");
  const int m = std::atoi(std::getenv("PP_MICRO"));
  constexpr int kLayers = 8;
  auto build = [] {
    torch::manual_seed(42);
    std::vector<torch::nn::Linear> layers = {torch::nn::Linear(16, 32)};
    for (int l = 1; l + 1 < kLayers; ++l) layers.push_back(torch::nn::Linear(32, 32));
    layers.push_back(torch::nn::Linear(32, 4));
    return layers;
  };
  auto ref = build(), mine = build();
  // "interleaved": two chunks a rank, chunk c of rank s being virtual stage c·p + s.
  const int chunks = kind == "interleaved" ? 2 : 1;
  const int per = kLayers / (p * chunks);
  auto first_layer = [&](int chunk) { return (chunk * p + s) * per; };
  auto run_layers = [](std::vector<torch::nn::Linear>& ls, int a, int b, torch::Tensor x) {
    for (int l = a; l < b; ++l) {
      x = ls[l]->forward(x);
      if (l + 1 < kLayers) x = torch::tanh(x);
    }
    return x;
  };
  std::vector<torch::Tensor> ref_params, stage_params;
  for (auto& l : ref) for (auto& q : l->parameters()) ref_params.push_back(q);
  for (int c = 0; c < chunks; ++c) {
    for (int l = first_layer(c); l < first_layer(c) + per; ++l) {
      for (auto& q : mine[l]->parameters()) stage_params.push_back(q);
    }
  }
  torch::optim::SGD ref_opt(ref_params, torch::optim::SGDOptions(0.1).momentum(0.9));
  torch::optim::SGD opt(stage_params, torch::optim::SGDOptions(0.1).momentum(0.9));
  PipelineSchedule schedule(pp,
                            kind == "gpipe"         ? PipelineScheduleKind::kGPipe
                            : kind == "interleaved" ? PipelineScheduleKind::kInterleaved1F1B
                                                    : PipelineScheduleKind::k1F1B,
                            m, chunks);
  for (int step = 0; step < kSteps; ++step) {
    auto [x, y] = batch(step);
    ref_opt.zero_grad();
    auto ref_loss = torch::mse_loss(run_layers(ref, 0, kLayers, x), y);
    ref_loss.backward();
    ref_opt.step();
    opt.zero_grad();
    double loss = schedule.run(
        [&](int chunk, const torch::Tensor& in) {
          return run_layers(mine, first_layer(chunk), first_layer(chunk) + per, in);
        },
        x, y,
        [](const torch::Tensor& out, const torch::Tensor& t) { return torch::mse_loss(out, t); });
    opt.step();
    double d = std::abs(loss - ref_loss.item<double>()) / ref_loss.item<double>();
    CHECK(d < 1e-5, "step " << step << " pipeline loss " << loss << " vs " << ref_loss.item<double>());
  }
  for (int c = 0; c < chunks; ++c) {
    for (int l = first_layer(c); l < first_layer(c) + per; ++l) {
      CHECK(rel_diff(mine[l]->weight, ref[l]->weight) < 1e-5, "stage " << s << " layer " << l);
      CHECK(rel_diff(mine[l]->bias, ref[l]->bias) < 1e-5,
            "stage " << s << " layer " << l << " bias");
    }
  }
  CHECK(std::abs(schedule.theoretical_bubble() - double(p - 1) / (chunks * m + p - 1)) < 1e-12,
        "bubble");
  if (chunks > 1) {
    // Megatron-LM's warm-up, 2(p - s - 1) + (v - 1)p forwards, and the steady state's first
    // forward come before the first backward.
    const auto order = schedule.order();
    size_t warmup = 0;
    while (warmup < order.size() && order[warmup].forward) ++warmup;
    const size_t want = std::min<size_t>(2 * (p - s - 1) + (chunks - 1) * p + 1, chunks * m);
    CHECK(warmup == want, "stage " << s << ": " << warmup << " forwards before the first backward");
    try {
      PipelineSchedule odd(pp, PipelineScheduleKind::kInterleaved1F1B, p + 1, 2);
      CHECK(false, "interleaving accepted " << p + 1 << " micro-batches on " << p << " stages");
    } catch (const ConfigError& e) {
      CHECK(std::string(e.what()).find("divisible by the pipeline size") != std::string::npos,
            e.what());
    }
  }
  CHECK(schedule.measured_bubble() >= 0 && schedule.measured_bubble() < 1, "measured bubble");
  std::cout << kind << " pp=" << p << " m=" << m << " stage " << s << " bubble measured "
            << schedule.measured_bubble() << " theoretical " << schedule.theoretical_bubble()
            << std::endl;
  try {
    schedule.run([](int, const torch::Tensor& t) { return t; }, torch::zeros({5, 16}),
                 torch::zeros({5, 4}),
                 [](const torch::Tensor& a, const torch::Tensor&) { return a.sum(); });
    CHECK(false, "a batch that does not divide into micro-batches was accepted");
  } catch (const ConfigError& e) {
    CHECK(std::string(e.what()).find("does not divide") != std::string::npos, e.what());
  }
}

// 4 ranks, COMPOSE=tp_pp (tp=2 x pp=2: tensor-parallel layers inside each pipeline stage) or
// dp_pp (dp=2 x pp=2: each stage data-parallel, gradients averaged after the 1F1B schedule);
// 20 SGD steps match the single-process run of the same 4-layer MLP.
void scenario_compose(World& w) {
  const std::string how = std::getenv("COMPOSE");
  MeshOptions mo = how == "tp_pp" ? MeshOptions().tensor_parallel(2).pipeline_parallel(2)
                                  : MeshOptions().pipeline_parallel(2);
  ProcessMesh mesh(w.comm, mo);
  const std::vector<std::pair<int64_t, int64_t>> dims = {{16, 64}, {64, 16}, {16, 32}, {32, 4}};
  torch::manual_seed(42);
  std::vector<torch::nn::Linear> ref;
  for (auto [i, o] : dims) ref.emplace_back(i, o);
  // The model under test, built from the same seed: tp layers (column, row, column, row) or
  // plain ones; stage s owns layers 2s and 2s+1.
  torch::manual_seed(42);
  std::vector<torch::nn::AnyModule> layers;
  auto stage_module = std::make_shared<torch::nn::Module>();
  for (size_t l = 0; l < dims.size(); ++l) {
    auto [i, o] = dims[l];
    torch::nn::AnyModule m;
    if (how == "tp_pp") {
      if (l % 2 == 0) m = torch::nn::AnyModule(ColumnParallelLinear(i, o, mesh.tp()));
      else m = torch::nn::AnyModule(RowParallelLinear(i, o, mesh.tp()));
    } else {
      m = torch::nn::AnyModule(torch::nn::Linear(i, o));
    }
    if (static_cast<int>(l) / 2 == mesh.pp_rank()) {
      stage_module->register_module("layer" + std::to_string(l), m.ptr());
    }
    layers.push_back(m);
  }
  const int lo = 2 * mesh.pp_rank(), hi = lo + 2;
  auto run = [](auto&& fwd, int a, int b, torch::Tensor x) {
    for (int l = a; l < b; ++l) {
      x = fwd(l, x);
      if (l < 3) x = torch::tanh(x);
    }
    return x;
  };
  std::vector<torch::Tensor> ref_params;
  for (auto& l : ref) for (auto& q : l->parameters()) ref_params.push_back(q);
  torch::optim::SGD ref_opt(ref_params, torch::optim::SGDOptions(0.1).momentum(0.9));
  torch::optim::SGD opt(stage_module->parameters(), torch::optim::SGDOptions(0.1).momentum(0.9));
  std::unique_ptr<DataParallel> ddp;
  if (how == "dp_pp") ddp = std::make_unique<DataParallel>(stage_module, mesh.dp());
  PipelineSchedule schedule(mesh.pp(), PipelineScheduleKind::k1F1B, 2);
  const int64_t local = kGlobalBatch / mesh.dp_size();
  for (int step = 0; step < kSteps; ++step) {
    auto [x, y] = batch(step);
    ref_opt.zero_grad();
    auto ref_loss = torch::mse_loss(
        run([&](int l, torch::Tensor t) { return ref[l]->forward(t); }, 0, 4, x), y);
    ref_loss.backward();
    ref_opt.step();
    opt.zero_grad();
    auto xs = x.narrow(0, mesh.dp_rank() * local, local), ys = y.narrow(0, mesh.dp_rank() * local, local);
    double loss;
    {
      std::unique_ptr<DataParallel::NoSync> guard;
      if (ddp) guard = std::make_unique<DataParallel::NoSync>(*ddp);
      loss = schedule.run(
          [&](const torch::Tensor& in) {
            return run([&](int l, torch::Tensor t) { return layers[l].forward(t); }, lo, hi, in);
          },
          xs, ys, [](const torch::Tensor& o, const torch::Tensor& t) { return torch::mse_loss(o, t); });
    }
    if (ddp) ddp->sync();
    opt.step();
    auto total = at::tensor({loss}, at::kDouble);
    mesh.dp()->all_reduce(total, ReduceOp::kAvg);
    double d = std::abs(total.item<double>() - ref_loss.item<double>()) / ref_loss.item<double>();
    CHECK(d < 1e-5, how << " step " << step << " loss " << total.item<double>() << " vs "
                         << ref_loss.item<double>());
  }
  for (int l = lo; l < hi; ++l) {
    torch::Tensor w8 = layers[l].ptr()->named_parameters()["weight"];
    torch::Tensor want = ref[l]->weight;
    if (how == "tp_pp") {
      const int d = l % 2 == 0 ? 0 : 1;
      const int64_t part = want.size(d) / mesh.tp_size();
      want = want.narrow(d, mesh.tp_rank() * part, part);
    }
    CHECK(rel_diff(w8, want) < 1e-5, how << " layer " << l << " weight");
  }
}

// tp = world size: causal self-attention with heads split across ranks matches the same
// attention written with torch::nn::Linear on one process over 20 SGD steps.
void scenario_attention(World& w) {
  auto tp = w.comm;
  const int64_t dim = 16, heads = 4, seq = 6;
  torch::manual_seed(5);
  torch::nn::Linear q(dim, dim), k(dim, dim), v(dim, dim), o(dim, dim);
  torch::manual_seed(5);
  ParallelSelfAttention attn(dim, heads, tp);
  auto reference = [&](const torch::Tensor& x) {
    const int64_t b = x.size(0), hd = dim / heads;
    auto split = [&](const torch::Tensor& y) { return y.view({b, seq, heads, hd}).transpose(1, 2); };
    auto s = split(q(x)).matmul(split(k(x)).transpose(-2, -1)) / std::sqrt(double(hd));
    s = s.masked_fill(torch::ones({seq, seq}, torch::kBool).triu(1), -INFINITY);
    return o(s.softmax(-1).matmul(split(v(x))).transpose(1, 2).reshape({b, seq, dim}));
  };
  std::vector<torch::Tensor> ref_params;
  for (auto* m : std::initializer_list<torch::nn::Module*>{q.get(), k.get(), v.get(), o.get()}) {
    for (auto& p : m->parameters()) ref_params.push_back(p);
  }
  torch::optim::SGD ref_opt(ref_params, torch::optim::SGDOptions(0.05).momentum(0.9));
  torch::optim::SGD opt(attn->parameters(), torch::optim::SGDOptions(0.05).momentum(0.9));
  for (int step = 0; step < kSteps; ++step) {
    torch::manual_seed(4000 + step);
    auto x = torch::randn({3, seq, dim}), target = torch::randn({3, seq, dim});
    ref_opt.zero_grad();
    auto ref_loss = torch::mse_loss(reference(x), target);
    ref_loss.backward();
    ref_opt.step();
    opt.zero_grad();
    auto loss = torch::mse_loss(attn(x), target);
    loss.backward();
    opt.step();
    double d = std::abs(loss.item<double>() - ref_loss.item<double>()) / ref_loss.item<double>();
    CHECK(d < 1e-5, "step " << step << " attention loss " << loss.item<double>() << " vs "
                             << ref_loss.item<double>());
  }
  const int64_t part = dim / tp->size(), start = tp->rank() * part;
  CHECK(rel_diff(attn->q->weight, q->weight.narrow(0, start, part)) < 1e-5, "q shard");
  CHECK(rel_diff(attn->out->weight, o->weight.narrow(1, start, part)) < 1e-5, "out shard");
  try {
    ParallelSelfAttention bad(dim, 3, tp);
    CHECK(false, "3 heads for dim 16 accepted");
  } catch (const ConfigError&) {
  }
}

// Gradients averaged in bf16 on the wire (DataParallelOptions::reduce_in): each one is the fp32
// average of the ranks' gradients to bf16 precision, and a bf16 value (it travelled as one).
void scenario_bf16_reduce(World& w) {
  Net net = make_net();
  DataParallel ddp(net.ptr(), w.comm, DataParallelOptions().reduce_in(torch::kBFloat16));
  auto [x, y] = batch(0);
  const int64_t per = kGlobalBatch / w.size;
  auto mine_x = x.narrow(0, w.rank * per, per), mine_y = y.narrow(0, w.rank * per, per);
  // The fp32 reference: the mean of every rank's own gradient, computed here for all ranks.
  Net ref = make_net();
  std::map<std::string, torch::Tensor> expected;
  for (int r = 0; r < w.size; ++r) {
    ref->zero_grad();
    torch::mse_loss(ref->forward(x.narrow(0, r * per, per)), y.narrow(0, r * per, per)).backward();
    for (const auto& p : ref->named_parameters()) {
      auto g = p.value().grad().clone() / double(w.size);
      expected[p.key()] = expected.count(p.key()) ? expected[p.key()] + g : g;
    }
  }
  torch::mse_loss(net->forward(mine_x), mine_y).backward();
  for (const auto& p : net->named_parameters()) {
    const auto& g = p.value().grad();
    CHECK(g.scalar_type() == torch::kFloat, p.key() << " gradient is not fp32");
    CHECK(torch::equal(g, g.to(torch::kBFloat16).to(torch::kFloat)),
          p.key() << " gradient did not travel as bf16");
    const double d = rel_diff(g, expected[p.key()]);
    CHECK(d < 1.0 / 64, p.key() << " differs from the fp32 average by " << d << " (relative)");
  }
}

// An overflow on one rank only (its own parameters, as in tensor or pipeline parallelism)
// skips the step on every rank: each learns it from the all-reduced flag.
void scenario_loss_scale_overflow(World& w) {
  LossScaler scaler;
  auto p = torch::zeros({4}, torch::requires_grad());
  for (int round = 0; round < 2; ++round) {
    const bool overflow_here = round == 0 && w.rank == w.size - 1;
    p.mutable_grad() = torch::full({4}, overflow_here ? INFINITY : 65536.0f);
    const bool finite = scaler.unscale({p}, {w.comm.get()});
    CHECK(finite == (round == 1), "rank " << w.rank << " round " << round << ": finite " << finite);
    scaler.update(finite);
  }
  CHECK(scaler.scale_value() == 32768, "scale " << scaler.scale_value());
  CHECK(torch::equal(p.grad(), torch::full({4}, 2.0f)), "unscaled by the backed-off scale");
}

// Sequence parallelism: an MLP (embedding, column-parallel, row-parallel, column-parallel)
// on sequence chunks equals the single-process one on the whole sequence, values and
// gradients; in bf16 under autocast, to bf16 precision; a sequence tp does not divide is a
// ConfigError naming the rank.
void scenario_sequence_parallel(World& w) {
  auto tp = w.comm;
  const int k = tp->rank(), n = tp->size();
  const int64_t vocab = 32, dim = 16, hidden = 64, b = 2, t = 4 * n;
  for (const at::ScalarType dtype : {at::kFloat, at::kBFloat16}) {
    torch::manual_seed(7);
    torch::nn::Embedding emb(vocab, dim);
    torch::nn::Linear fc1(torch::nn::LinearOptions(dim, hidden).bias(false));
    torch::nn::Linear fc2(torch::nn::LinearOptions(hidden, dim).bias(false)), head(dim, vocab);
    torch::manual_seed(7);
    VocabParallelEmbedding temb(vocab, dim, tp);
    ColumnParallelLinear tfc1(dim, hidden, tp, false, false);
    RowParallelLinear tfc2(hidden, dim, tp, true, false);
    ColumnParallelLinear thead(dim, vocab, tp, /*gather_output=*/true);
    temb->set_sequence_parallel(true);
    tfc1->set_sequence_parallel(true);
    tfc2->set_sequence_parallel(true);
    thead->set_sequence_parallel(true);
    auto ids = torch::randint(0, vocab, {b, t});
    auto weights = torch::randn({b, t, vocab});
    torch::Tensor ref_out, out;
    {
      tenax::Autocast mixed(at::kCPU, dtype);
      ref_out = head(torch::tanh(fc2(torch::tanh(fc1(emb(ids))))));
      // Between the blocks each rank holds 1/n of the positions.
      auto chunk = temb(ids);
      CHECK(chunk.size(1) == t / n, "embedding output " << chunk.sizes());
      chunk = tfc2(torch::tanh(tfc1(chunk)));
      CHECK(chunk.size(1) == t / n, "row-parallel output " << chunk.sizes());
      out = thead(torch::tanh(chunk));
    }
    (ref_out.to(at::kFloat) * weights).sum().backward();
    (out.to(at::kFloat) * weights).sum().backward();
    const double tol = dtype == at::kFloat ? 1e-5 : 2e-2;
    auto check = [&](const torch::Tensor& mine, const torch::Tensor& want, const char* what) {
      const double d = rel_diff(mine.to(at::kFloat), want.to(at::kFloat));
      CHECK(d < tol, what << " (" << c10::toString(dtype) << ") differs by " << d);
    };
    check(out, ref_out, "output");
    auto rows = [&](const torch::Tensor& full, int64_t d) {
      const int64_t part = full.size(d) / n;
      return full.narrow(d, k * part, part);
    };
    check(temb->weight.grad(), rows(emb->weight.grad(), 0), "embedding gradient");
    check(tfc1->weight.grad(), rows(fc1->weight.grad(), 0), "column-parallel gradient");
    check(tfc2->weight.grad(), rows(fc2->weight.grad(), 1), "row-parallel gradient");
    check(thead->weight.grad(), rows(head->weight.grad(), 0), "head gradient");
    check(thead->bias.grad(), rows(head->bias.grad(), 0), "head bias gradient");
  }
  try {
    scatter_to_sequence_parallel(torch::zeros({1, 2 * n + 1, 4}), *tp);
    CHECK(false, "a sequence of " << 2 * n + 1 << " was split " << n << " ways");
  } catch (const ConfigError& e) {
    CHECK(std::string(e.what()).find("rank " + std::to_string(k)) != std::string::npos, e.what());
  }
}

void scenario_unused(World& w) {
  Net net = make_net(/*with_unused=*/true);
  {
    DataParallel ddp(net.ptr(), w.comm);
    auto [x, y] = batch(0);
    try {
      torch::mse_loss(net->forward(x), y).backward();
      CHECK(false, "backward with an unused parameter did not fail");
    } catch (const std::exception& e) {
      std::string msg = e.what();
      CHECK(msg.find("unused.weight") != std::string::npos && msg.find("allow_unused") !=
                                                                   std::string::npos,
             "message does not name the parameter: " << msg);
    }
  }
  CommOptions opts;
  opts.name = "world.allow_unused";
  auto fresh = create_communicator(Backend::kGloo, w.store, w.rank, w.size, opts);
  Net net2 = make_net(true);
  DataParallel ddp(net2.ptr(), fresh, DataParallelOptions().allow_unused(true));
  auto [x, y] = batch(0);
  net2->zero_grad();
  torch::mse_loss(net2->forward(x), y).backward();
  CHECK(net2->unused->weight.grad().defined() &&
             net2->unused->weight.grad().abs().sum().item<double>() == 0,
         "unused parameter's gradient should be zero");
}

void scenario_mesh(World& w) {
  auto world = w.comm;
  ProcessMesh mesh(world, MeshOptions().tensor_parallel(2));
  const int r = world->rank();
  CHECK(mesh.dp_size() == world->size() / 2 && mesh.tp_size() == 2 && mesh.pp_size() == 1,
         "sizes");
  CHECK(mesh.tp_rank() == r % 2 && mesh.dp_rank() == r / 2, "coordinates of rank " << r);
  CHECK(mesh.rank_of(mesh.dp_rank(), mesh.tp_rank(), mesh.pp_rank()) == r, "rank_of");
  // A tp group is two consecutive ranks; a dp group is the ranks with the same parity.
  at::Tensor t = at::full({1}, r, at::kLong);
  mesh.tp()->all_reduce(t);
  CHECK(t.item<int64_t>() == (r / 2) * 4 + 1, "tp group of rank " << r);
  t.fill_(r);
  mesh.dp()->all_reduce(t);
  int64_t want = 0;
  for (int k = r % 2; k < world->size(); k += 2) want += k;
  CHECK(t.item<int64_t>() == want, "dp group of rank " << r);
  try {
    ProcessMesh bad(world, MeshOptions().tensor_parallel(3));
    CHECK(false, "tp=3 on " << world->size() << " ranks was accepted");
  } catch (const ConfigError& e) {
    CHECK(std::string(e.what()).find("does not divide") != std::string::npos, e.what());
  }
  try {
    ProcessMesh::resolve(4, MeshOptions().data_parallel(4).tensor_parallel(2));
    CHECK(false, "dp=4 x tp=2 on 4 ranks was accepted");
  } catch (const ConfigError& e) {
    CHECK(std::string(e.what()).find("it takes dp=2") != std::string::npos, e.what());
  }
  try {
    ProcessMesh::resolve(4, MeshOptions().dim_order("tp-tp-pp"));
    CHECK(false, "bad order accepted");
  } catch (const ConfigError&) {
  }
}

}  // namespace

int main(int argc, char** argv) {
  return tenax::testing::worker_main(argc, argv,
                                     {{"match", [](World& w) { scenario_match(w, 1); }},
                                      {"accumulate", [](World& w) { scenario_match(w, 2); }},
                                      {"unused", scenario_unused},
                                      {"bf16_reduce", scenario_bf16_reduce},
                                      {"loss_scale_overflow", scenario_loss_scale_overflow},
                                      {"zero", scenario_zero},
                                      {"tp", scenario_tp},
                                      {"sequence_parallel", scenario_sequence_parallel},
                                      {"dp_tp", scenario_dp_tp},
                                      {"pp", scenario_pp},
                                      {"compose", scenario_compose},
                                      {"attention", scenario_attention},
                                      {"mesh", scenario_mesh}});
}
