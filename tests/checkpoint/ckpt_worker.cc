// One rank of a multi-process checkpoint test. Usage: ckpt_worker SCENARIO
// Environment: CKPT_RUN (run name), CKPT_DURABLE (directory or s3:// URL, optional),
// CKPT_STEP (the step a "save" scenario writes last), CKPT_EXPECT_TIER / CKPT_EXPECT_STEP.
//
// Every rank holds parts of two global tensors whose elements are a function of their global
// index and the step, so any rank on any mesh knows what a restored part must contain:
//   "w" [12, 10] float32 split along dim 0 over the ranks (uneven when 12 % world != 0),
//   "m" [6, 8] float64 split along dim 1 (an optimizer moment, say),
//   "b" [5] bfloat16 replicated on every rank,
// plus ints "step" and "cursor" and a per-rank blob "rng".
// Prints "PASS <scenario>" and exits 0 when every check holds.

#include <ATen/ATen.h>
#include <signal.h>

#include <cstdlib>
#include <iostream>
#include <thread>

#include "support/worker_main.h"
#include "tenax/checkpoint/engine.h"
#include "tenax/checkpoint/module_state.h"
#include "tenax/parallel/zero.h"
#include "tenax/core/error.h"
#include "tenax/tenax.h"

namespace {

using namespace tenax;

std::string env(const char* name, const std::string& fallback = "") {
  const char* v = std::getenv(name);
  return v ? v : fallback;
}

// [lo, hi) of dimension size `n` for part `r` of `k`.
std::pair<int64_t, int64_t> part(int64_t n, int r, int k) {
  const int64_t base = n / k, extra = n % k;
  const int64_t lo = r * base + std::min<int64_t>(r, extra);
  return {lo, lo + base + (r < extra ? 1 : 0)};
}

at::Tensor global_w(int64_t step) {
  return at::arange(120, at::kFloat).reshape({12, 10}) + 1000.0 * step;
}
at::Tensor global_m(int64_t step) {
  return at::arange(48, at::kDouble).reshape({6, 8}) * 0.5 - double(step);
}
at::Tensor global_b(int64_t step) {
  return (at::arange(5, at::kFloat) + step).to(at::kBFloat16);
}

struct Parts {
  at::Tensor w, m, b, big;
  StateDict state;
};

// This rank's parts at `step` (or zeros, to be filled by restore).
Parts make_state(int rank, int world, int64_t step, bool zero) {
  Parts p;
  auto [w0, w1] = part(12, rank, world);
  auto [m0, m1] = part(8, rank, world);
  p.w = global_w(step).narrow(0, w0, w1 - w0).contiguous();
  p.m = global_m(step).narrow(1, m0, m1 - m0).contiguous();
  p.b = global_b(step).contiguous();
  if (zero) p.w.zero_(), p.m.zero_(), p.b.zero_();
  p.state.add_shard("w", p.w, {12, 10}, {w0, 0});
  p.state.add_shard("m", p.m, {6, 8}, {0, m0});
  p.state.add("b", p.b);
  if (!env("CKPT_BIG").empty()) {  // 12 MiB per rank: an object of several multipart parts
    p.big = at::arange(3 << 20, at::kFloat) + float(rank + step);
    if (zero) p.big.zero_();
    p.state.add_shard("big", p.big, {world * (3 << 20)}, {rank * (3 << 20)});
  }
  p.state.set_int("step", zero ? -1 : step);
  p.state.set_int("cursor", zero ? -1 : step * 16);
  p.state.set_blob("rng", zero ? "" : "rng of rank " + std::to_string(rank) + " at " +
                                        std::to_string(step));
  return p;
}

CheckpointOptions options() {
  CheckpointOptions o = CheckpointOptions::from_environment();
  o.run = env("CKPT_RUN", "test");
  o.durable = env("CKPT_DURABLE");
  o.persist_every = std::stoi(env("CKPT_PERSIST_EVERY", "1"));
  o.keep_durable = std::stoi(env("CKPT_KEEP", "2"));
  o.memory_slots = 2;
  o.memory_budget_bytes = std::stoll(env("CKPT_BUDGET", "0"));
  o.s3.part_bytes = 5 << 20;
  o.s3.backoff = std::chrono::milliseconds(50);
  o.s3.request_timeout = std::chrono::seconds(3);
  o.s3.max_attempts = 3;
  return o;
}

void check_restored(const Parts& p, int rank, int world, int64_t step, int saved_rank) {
  auto [w0, w1] = part(12, rank, world);
  auto [m0, m1] = part(8, rank, world);
  CHECK(p.w.equal(global_w(step).narrow(0, w0, w1 - w0)), "w of rank " << rank << ": " << p.w);
  CHECK(p.m.equal(global_m(step).narrow(1, m0, m1 - m0)), "m of rank " << rank << ": " << p.m);
  CHECK(p.b.equal(global_b(step)), "b: " << p.b);
  if (p.big.defined()) {
    CHECK(p.big.equal(at::arange(3 << 20, at::kFloat) + float(rank + step)), "big differs");
  }
  CHECK(p.state.get_int("step") == step, "step int " << p.state.get_int("step"));
  CHECK(p.state.get_int("cursor") == step * 16, "cursor " << p.state.get_int("cursor"));
  const std::string rng = "rng of rank " + std::to_string(saved_rank) + " at " + std::to_string(step);
  CHECK(p.state.get_blob("rng") == rng, "rng blob '" << p.state.get_blob("rng") << "'");
}

// Saves steps 1..CKPT_STEP, waits for the background work, exits (regions stay).
void scenario_save(World& w) {
  CheckpointEngine engine(options(), w.comm, w.store);
  const int64_t last = std::stoll(env("CKPT_STEP", "4"));
  for (int64_t s = 1; s <= last; ++s) {
    Parts p = make_state(w.rank, w.size, s, false);
    engine.save(s, p.state);
    // Paced: let the durable tier keep up, as it does when training steps take longer than an
    // upload (otherwise a due step not yet started is replaced by the next due one).
    if (!env("CKPT_PACED").empty()) engine.wait();
  }
  engine.wait();
  if (!env("CKPT_KILL_DURING").empty()) {
    // Die while saving the next step: right after save() returns, with the commit and the
    // persist of that step in flight in the background threads.
    Parts p = make_state(w.rank, w.size, last + 1, false);
    engine.save(last + 1, p.state);
    ::raise(SIGKILL);
  }
  auto st = engine.status();
  CHECK(st.last_saved == last, "last saved " << st.last_saved);
  CHECK(st.last_error.empty(), "background error: " << st.last_error);
  if (!options().durable.empty()) {
    CHECK(st.last_persisted == last / options().persist_every * options().persist_every,
          "last persisted " << st.last_persisted);
  }
}

// Restores into zeroed parts and checks tier, step and every value.
void scenario_restore(World& w) {
  CheckpointEngine engine(options(), w.comm, w.store);
  Parts p = make_state(w.rank, w.size, 0, true);
  auto r = engine.restore(p.state);
  std::string tier = env("CKPT_EXPECT_TIER");
  if (tier.find(',') != std::string::npos) {  // one tier per rank: "memory,peer,memory"
    std::vector<std::string> tiers;
    for (size_t at = 0, next; at <= tier.size(); at = next + 1) {
      next = std::min(tier.find(',', at), tier.size());
      tiers.push_back(tier.substr(at, next - at));
    }
    tier = tiers.at(w.rank);
  }
  int64_t step = std::stoll(env("CKPT_EXPECT_STEP", "-1"));
  // A job killed in the middle of saving `step`: either that step is whole everywhere, or the
  // one before is what comes back.
  if (r && !env("CKPT_EXPECT_STEP_OR_NEXT").empty()) {
    const int64_t first = std::stoll(env("CKPT_EXPECT_STEP_OR_NEXT"));
    CHECK(r->step == first || r->step == first + 1, "step " << r->step);
    step = r->step;
  }
  if (tier == "none") {
    CHECK(!r.has_value(), "restored step " << r->step << " from " << r->tier);
    return;
  }
  CHECK(r.has_value(), "nothing restored");
  if (!r) return;
  std::cout << "restored step " << r->step << " from " << r->tier << " (" << r->bytes
            << " bytes" << (r->resharded ? ", resharded" : "") << ")" << std::endl;
  CHECK(r->tier == tier, "tier " << r->tier << ", expected " << tier);
  CHECK(r->step == step, "step " << r->step << ", expected " << step);
  const int saved_world = std::stoi(env("CKPT_SAVED_WORLD", std::to_string(w.size)));
  CHECK(r->resharded == (saved_world != w.size), "resharded flag " << r->resharded);
  check_restored(p, w.rank, w.size, step, w.rank < saved_world ? w.rank : 0);
}

// A restore that finds no intact step on any tier throws, and leaves the tensors, ints and
// blobs it was given (here those of step 99) exactly as they were, on every rank.
void scenario_restore_fails(World& w) {
  CheckpointEngine engine(options(), w.comm, w.store);
  Parts p = make_state(w.rank, w.size, 99, false);
  std::string error;
  try {
    engine.restore(p.state);
  } catch (const CheckpointError& e) {
    error = e.what();
  }
  std::cout << "restore error: " << error << std::endl;
  CHECK(error.find("no complete step could be restored") != std::string::npos,
        "restore did not fail: '" << error << "'");
  check_restored(p, w.rank, w.size, 99, w.rank);
}

// Save, then restore in the same engine: memory tier, newest step.
void scenario_roundtrip(World& w) {
  CheckpointEngine engine(options(), w.comm, w.store);
  for (int64_t s = 1; s <= 4; ++s) {
    Parts p = make_state(w.rank, w.size, s, false);
    engine.save(s, p.state);
  }
  Parts p = make_state(w.rank, w.size, 0, true);
  auto r = engine.restore(p.state);
  CHECK(r && r->tier == "memory" && r->step == 4, "restore gave " << (r ? r->tier : "nothing"));
  if (r) check_restored(p, w.rank, w.size, 4, w.rank);
}

// The S3 endpoint hangs (SIGSTOP) while saves go on: saves return, persistence is pending with
// an error in status(), restore still works from memory; when the endpoint comes back
// (SIGCONT) the newest due step is persisted.
void scenario_outage(World& w) {
  const pid_t s3 = static_cast<pid_t>(std::stoll(env("S3_PID")));
  CheckpointEngine engine(options(), w.comm, w.store);
  w.comm->barrier();
  if (w.rank == 0) ::kill(s3, SIGSTOP);
  w.comm->barrier();
  auto start = std::chrono::steady_clock::now();
  for (int64_t s = 1; s <= 5; ++s) {
    Parts p = make_state(w.rank, w.size, s, false);
    engine.save(s, p.state);
  }
  const double save_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  CHECK(save_s < 2.0, "five saves took " << save_s << " s with the endpoint down");
  // Each request times out after 3 s and is tried 3 times before the failure is reported.
  auto st = engine.status();
  for (int i = 0; i < 300 && st.last_error.empty(); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    st = engine.status();
  }
  std::cout << "while down: pending " << st.pending_persist << ", error: " << st.last_error
            << std::endl;
  CHECK(st.pending_persist >= 1, "no persist pending while the endpoint is down");
  CHECK(!st.last_error.empty(), "no error reported while the endpoint is down");
  CHECK(st.last_persisted < 1, "persisted step " << st.last_persisted << " with the endpoint down");
  Parts q = make_state(w.rank, w.size, 0, true);
  auto r = engine.restore(q.state);
  CHECK(r && r->tier == "memory" && r->step == 5, "restore with the endpoint down gave "
                                                      << (r ? r->tier : "nothing"));
  w.comm->barrier();
  if (w.rank == 0) ::kill(s3, SIGCONT);
  engine.wait(std::chrono::seconds(60));
  st = engine.status();
  std::cout << "after: persisted " << st.last_persisted << std::endl;
  CHECK(st.last_persisted == 5, "after the endpoint returned, last persisted " << st.last_persisted);
}

// ZeroAdamW over two parameters (38 elements, sharded over the dp = world ranks) after one step
// with a fixed gradient g: exp_avg = (1 - 0.9) g and exp_avg_sq = (1 - 0.999) g^2, element by
// element, whatever the sharding.
struct ZeroRun {
  std::vector<at::Tensor> params;
  std::unique_ptr<ZeroAdamW> opt;
};
at::Tensor zero_grad_of(int64_t i, int64_t n) { return at::arange(n, at::kFloat) * 0.01 - 0.1 * i; }
ZeroRun zero_run(World& w, bool stepped) {
  ZeroRun z;
  z.params = {at::arange(35, at::kFloat).reshape({5, 7}) * 0.1, at::arange(3, at::kFloat) - 1.0};
  if (!stepped) for (auto& p : z.params) p.zero_();
  z.opt = std::make_unique<ZeroAdamW>(z.params, w.comm, torch::optim::AdamWOptions(0.1));
  if (stepped) {
    for (size_t i = 0; i < z.params.size(); ++i) {
      z.params[i].mutable_grad() = zero_grad_of(i, z.params[i].numel()).view_as(z.params[i]);
    }
    z.opt->step();
  }
  return z;
}

StateDict zero_state_dict(ZeroRun& z) {
  StateDict state;
  state.add("a", z.params[0]);
  state.add("b", z.params[1]);
  add_zero_adamw_state(state, *z.opt);
  return state;
}

void scenario_zero_save(World& w) {
  CheckpointEngine engine(options(), w.comm, w.store);
  ZeroRun z = zero_run(w, true);
  StateDict state = zero_state_dict(z);
  engine.save(1, state);
  engine.wait();
}

void scenario_zero_restore(World& w) {
  ZeroRun expected = zero_run(w, true);  // the same step, on this world size
  CheckpointEngine engine(options(), w.comm, w.store);
  ZeroRun z = zero_run(w, false);
  StateDict state = zero_state_dict(z);
  auto r = engine.restore(state);
  CHECK(r && r->tier == "durable" && r->resharded, "restore gave " << (r ? r->tier : "nothing"));
  if (!r) return;
  apply_zero_adamw_state(state, *z.opt);
  for (size_t i = 0; i < 2; ++i) {
    CHECK(z.params[i].allclose(expected.params[i]), "parameter " << i << ": " << z.params[i]);
  }
  const at::Tensor g = at::cat({zero_grad_of(0, 35), zero_grad_of(1, 3)});
  const auto& m = state.tensor("zero.exp_avg");
  const auto& v = state.tensor("zero.exp_avg_sq");
  const int64_t off = m.offsets[0], n = m.tensor.numel();
  CHECK(m.tensor.allclose(0.1 * g.narrow(0, off, n), 1e-5, 1e-7), "exp_avg " << m.tensor);
  CHECK(v.tensor.allclose(0.001 * g.narrow(0, off, n).pow(2), 1e-5, 1e-9), "exp_avg_sq " << v.tensor);
  CHECK(state.get_int("zero.step") == 1, "step " << state.get_int("zero.step"));
  // Training goes on from the restored state exactly as from the original.
  for (auto* run : {&z, &expected}) {
    for (size_t i = 0; i < 2; ++i) {
      run->params[i].mutable_grad() = zero_grad_of(i, run->params[i].numel()).view_as(run->params[i]);
    }
    run->opt->step();
  }
  for (size_t i = 0; i < 2; ++i) {
    CHECK(z.params[i].allclose(expected.params[i]), "after a step, parameter " << i);
  }
}

}  // namespace

int main(int argc, char** argv) {
  tenax::testing::WorkerOptions options;
  options.expected_error = env("CKPT_EXPECT_ERROR");  // scenarios that must fail, and how
  return tenax::testing::worker_main(argc, argv,
                                     {{"save", scenario_save},
                                      {"restore", scenario_restore},
                                      {"restore_fails", scenario_restore_fails},
                                      {"roundtrip", scenario_roundtrip},
                                      {"outage", scenario_outage},
                                      {"zero_save", scenario_zero_save},
                                      {"zero_restore", scenario_zero_restore}},
                                     options);
}
