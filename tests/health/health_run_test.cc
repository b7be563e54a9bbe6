// Each health fault injected into a 4-rank `llama_train --elastic` job under tenaxrun (real
// processes on loopback): the bad rank is named and acted on, and the job goes on.

#include <gtest/gtest.h>
#include <unistd.h>

#include <nlohmann/json.hpp>
#include <regex>
#include <sstream>

#include "support/process.h"
#include "support/recovery_events.h"
#include "tenax/checkpoint/engine.h"

namespace {

using tenax::testing::RankResult;
using tenax::testing::run_command;

// tenaxrun with 4 workers (--max-restarts 1) running the tiny preset for `steps` steps.
RankResult job(const std::string& fault, const std::vector<std::string>& flags, int steps,
               const std::vector<std::string>& agent_flags = {}) {
  static int n = 0;
  const std::string run = "health-" + std::to_string(getpid()) + "-" + std::to_string(++n);
  std::vector<std::string> argv = {TENAXRUN, "--nproc-per-node", "4", "--max-restarts", "1"};
  argv.insert(argv.end(), agent_flags.begin(), agent_flags.end());
  for (const std::string& a :
       {std::string(LLAMA_TRAIN), std::string("--elastic"), std::string("--preset"),
        std::string("tiny"), std::string("--global-batch"), std::string("24"),
        std::string("--steps"), std::to_string(steps), std::string("--log-interval"),
        std::string("5"), std::string("--eval-interval"), std::string("0"), std::string("--data"),
        std::string(LLAMA_CORPUS) + "/train.bin", std::string("--ckpt-run"), run}) {
    argv.push_back(a);
  }
  argv.insert(argv.end(), flags.begin(), flags.end());
  RankResult r = run_command(argv, {{"TENAX_FAULT", fault}}, std::chrono::seconds(240));
  // A job that failed keeps its snapshots in memory for a relaunch; these are not relaunched.
  tenax::CheckpointEngine::remove_memory(run);
  return r;
}

bool has(const std::string& text, const std::string& what) {
  return text.find(what) != std::string::npos;
}

// The first re-formation's event, as its leader logged it.
nlohmann::json first_recovery(const std::string& out) {
  const auto evs = tenax::testing::recovery_events(out);
  return evs.empty() ? nlohmann::json() : evs.front();
}

// Tokens/s of the logged windows after step `after` and up to `upto` (median).
double tokens_per_second_after(const std::string& out, int after, int upto = 1 << 30) {
  std::regex re(R"(step +(\d+)/\d+ \| loss [^|]+\|[^|]+\|[^|]+\| +(\d+) tok/s)");
  std::vector<double> v;
  for (auto it = std::sregex_iterator(out.begin(), out.end(), re); it != std::sregex_iterator();
       ++it) {
    const int step = std::stoi((*it)[1]);
    if (step > after && step <= upto) v.push_back(std::stod((*it)[2]));
  }
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// The loss rank 0 logged at step `step`.
double loss_at(const std::string& out, int step) {
  std::smatch m;
  std::regex re("step +" + std::to_string(step) + R"(/\d+ \| loss ([0-9.naif-]+))");
  return std::regex_search(out, m, re) ? std::stod(m[1]) : -1;
}

TEST(PreflightRunTest, ARankWhoseGemmDisagreesIsKeptOutAndTheJobStartsWithoutIt) {
  auto r = job("sdc:rank=2", {"--min-workers", "3"}, 20, {"--preflight"});
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_TRUE(has(r.output, "w2 on ")) << r.output;
  EXPECT_TRUE(has(r.output, "failed preflight and is kept out of the job")) << r.output;
  EXPECT_TRUE(has(r.output, "suspected silent data corruption")) << r.output;
  EXPECT_TRUE(has(r.output, "worker w2 failed its health checks (status 76); not restarted"));
  EXPECT_TRUE(has(r.output, "passed preflight")) << r.output;
  EXPECT_TRUE(has(r.output, "generation 1: 3 ranks")) << r.output;
  EXPECT_TRUE(has(r.output, "done, 20 steps")) << r.output;
}

TEST(PreflightRunTest, WithTooFewHealthyMembersTheJobFailsListingEveryReason) {
  auto r = job("shm_full:rank=1,sdc:rank=2", {"--min-workers", "4", "--join-timeout", "4"}, 10,
               {"--preflight"});
  EXPECT_NE(r.exit_code, 0) << r.output;
  EXPECT_TRUE(has(r.output, "kept out by the health checks")) << r.output;
  EXPECT_TRUE(has(r.output, "w1 on ")) << r.output;
  EXPECT_TRUE(has(r.output, "/dev/shm has 0 MiB free")) << r.output;
  EXPECT_TRUE(has(r.output, "GEMM checksum")) << r.output;
  EXPECT_FALSE(has(r.output, "step     5/")) << r.output;  // never trained
}

TEST(StragglerRunTest, AStragglerIsReportedWithinItsWindowAndTheJobGoesOnWithIt) {
  // 600 ms a step: well over the default threshold (1.5x) even when a loaded machine
  // stretches the healthy ranks' compute to half a second.
  auto r = job("slow=600:rank=1", {"--straggler-window", "5", "--straggler-steps", "3"}, 25);
  EXPECT_EQ(r.exit_code, 0) << r.output;
  std::smatch m;
  ASSERT_TRUE(std::regex_search(r.output, m, std::regex(R"(straggler: w1 on \S+ \(([0-9.]+)x)")))
      << r.output;
  EXPECT_GT(std::stod(m[1]), 1.5);
  EXPECT_TRUE(has(r.output, "done, 25 steps, 0 re-formations")) << r.output;
}

TEST(StragglerRunTest, EvictingAStragglerBringsTheThroughputBack) {
  const auto healthy = job("", {}, 60);
  ASSERT_EQ(healthy.exit_code, 0) << healthy.output;
  // The default window (10) and steps (5); at most one member may go (--min-workers 3), so a
  // healthy one that a loaded machine slows for a while is never evicted after it.
  auto r = job("slow=400:rank=1", {"--straggler-policy", "evict", "--min-workers", "3"}, 60);
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_TRUE(has(r.output, "w1 is evicted as a straggler")) << r.output;
  EXPECT_TRUE(has(r.output, "worker w1 failed its health checks (status 76); not restarted"));
  const auto ev = first_recovery(r.output);
  ASSERT_FALSE(ev.is_null()) << r.output;
  // The window filled (10 steps after the first, whose compute time is unknown), then 5 steps
  // above the threshold; a loaded machine may dip a score below it once or twice.
  EXPECT_LE(ev["failed_step"].get<int>(), 1 + 10 + 5 + 4) << ev.dump();
  // Back: far above the throughput with the straggler in, and near the healthy run's (a run
  // earlier on a machine whose load changes from one minute to the next: a looser bound).
  const double healthy_tps = tokens_per_second_after(healthy.output, 30);
  const double slowed = tokens_per_second_after(r.output, 1, ev["failed_step"].get<int>());
  const double after = tokens_per_second_after(r.output, 30);
  std::printf(
      "tokens/s: healthy %.0f, with the straggler %.0f, after evicting it %.0f (%.2fx, %.2fx)\n",
      healthy_tps, slowed, after, after / slowed, after / healthy_tps);
  EXPECT_GE(after, 1.4 * slowed) << r.output;
  EXPECT_GE(after, 0.75 * healthy_tps) << r.output;
}

TEST(HangRunTest, AHangInsideBackwardIsFoundWithinItsDerivedDeadlineAndRecovered) {
  auto r = job("hang_backward@20:rank=2", {"--min-workers", "3", "--hang-watchdog"}, 40);
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_TRUE(has(r.output, "w2 is stuck in step 20")) << r.output;
  EXPECT_TRUE(has(r.output, "the step has run")) << r.output;
  EXPECT_TRUE(has(r.output, "its thread (the training thread) is not waiting on others; threads:"))
      << r.output;
  EXPECT_TRUE(has(r.output, "worker w2 exited with status 77; restarting it")) << r.output;
  const auto ev = first_recovery(r.output);
  ASSERT_FALSE(ev.is_null()) << r.output;
  // The deadline is the 3 s floor (5 × p99 of 0.2 s steps is under it): far from the 30 s
  // timeout that would otherwise end the step.
  EXPECT_LT(ev["detect_ms"].get<double>(), 8000) << ev.dump();
  EXPECT_GE(ev["detect_ms"].get<double>(), 2900) << ev.dump();
  EXPECT_TRUE(has(r.output, "done, 40 steps")) << r.output;
}

TEST(ReplicaRunTest, ACorruptedReplicaIsNamedAndRejoinsWithItsStateFromAPeer) {
  auto r = job("sdc@12:rank=3", {"--hash-every", "4", "--min-workers", "3"}, 40);
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_TRUE(has(r.output, "after step 12 the state of w3 differs")) << r.output;
  EXPECT_TRUE(has(r.output, "worker w3 exited with status 77; restarting it")) << r.output;
  EXPECT_TRUE(std::regex_search(r.output, std::regex(R"("cause":"join"[^\n]*"joined":\["w3"\])")))
      << r.output;
  // Once back, its state hashes like the others' at every later check: every mismatch
  // reported is the one after step 12.
  auto count = [&](const std::string& what) {
    size_t n = 0;
    for (size_t at = r.output.find(what); at != std::string::npos; at = r.output.find(what, at + 1))
      ++n;
    return n;
  };
  EXPECT_EQ(count("the state of w3 differs"), count("after step 12 the state of w3 differs"))
      << r.output;
  EXPECT_TRUE(has(r.output, "done, 40 steps")) << r.output;
}

TEST(NonFiniteRunTest, ANanStepIsSkippedOrRolledBackAndTheLossCurveGoesOn) {
  for (const char* policy : {"skip", "rollback"}) {
    auto r = job("nan@10:rank=1", {"--nan-policy", policy}, 30);
    EXPECT_EQ(r.exit_code, 0) << policy << "\n" << r.output;
    EXPECT_TRUE(has(r.output, std::string(policy) == "skip" ? "update discarded (nan policy skip)"
                                                            : "rolling back to the last snapshot"))
        << r.output;
    const double at5 = loss_at(r.output, 5), at30 = loss_at(r.output, 30);
    EXPECT_GT(at5, 0) << r.output;
    EXPECT_GT(at30, 0) << r.output;
    EXPECT_LT(at30, at5) << policy << ": the loss did not go on falling\n" << r.output;
    EXPECT_TRUE(has(r.output, "done, 30 steps, 0 re-formations")) << r.output;
  }
}

TEST(HealthInputTest, AnUnknownPolicyOrFaultIsOneClearMessage) {
  auto r = run_command({LLAMA_TRAIN, "--elastic", "--straggler-policy", "kick", "--data",
                        std::string(LLAMA_CORPUS) + "/train.bin"});
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_TRUE(
      has(r.output, "--straggler-policy 'kick' is not a policy (expected off, report or evict)"))
      << r.output;
  r = run_command(
      {LLAMA_TRAIN, "--nan-policy", "ignore", "--data", std::string(LLAMA_CORPUS) + "/train.bin"});
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_TRUE(has(r.output, "--nan-policy 'ignore' is not a policy")) << r.output;
  r = run_command({LLAMA_TRAIN, "--data", std::string(LLAMA_CORPUS) + "/train.bin"},
                  {{"TENAX_FAULT", "nan=3"}});
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_TRUE(has(r.output, "TENAX_FAULT: 'nan=3'")) << r.output;
}

}  // namespace
