// In-process recovery, end to end: llama_train --elastic (the tiny preset on the prepared
// corpus) in real processes against a real store, with ranks killed, hung, restarted and
// resumed. Every run is checked against the loss of an uninterrupted run.

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <regex>
#include <thread>

#include "support/etcd_cluster.h"
#include "support/process.h"
#include "support/recovery_events.h"
#include "tenax/checkpoint/engine.h"
#include "tenax/store/store_server.h"

using tenax::testing::dump;
using tenax::testing::Process;
using tenax::testing::RankResult;
using tenax::testing::run_command;
using tenax::testing::run_ranks;

namespace {

constexpr int kSteps = 24;

class RecoveryTest : public ::testing::Test {
 protected:
  void SetUp() override {
    run_ = "rec" + std::to_string(getpid()) + "-" +
           ::testing::UnitTest::GetInstance()->current_test_info()->name();
    run_ = std::regex_replace(run_, std::regex("[^A-Za-z0-9-]"), "");
    run_ = run_.substr(0, 60);
    tenax::CheckpointEngine::remove_memory(run_);
  }
  void TearDown() override { tenax::CheckpointEngine::remove_memory(run_); }

  std::vector<std::string> args(std::vector<std::string> extra = {}) const {
    return train_args(run_, std::move(extra));
  }

  static std::vector<std::string> train_args(const std::string& run,
                                             std::vector<std::string> extra) {
    std::vector<std::string> a = {LLAMA_TRAIN, "--elastic", "--preset", "tiny",
                                  "--global-batch", "12", "--micro-batch", "4",
                                  "--steps", std::to_string(kSteps), "--log-interval", "1",
                                  "--data", std::string(LLAMA_CORPUS) + "/train.bin",
                                  // Generous: the first generation closes at once when all
                                  // ranks join; the window only covers a slow start under load.
                                  "--ckpt-run", run, "--last-call", "5"};
    a.insert(a.end(), extra.begin(), extra.end());
    return a;
  }

  // The final loss of an uninterrupted 4-rank run (computed once).
  static double baseline() {
    static double loss = [] {
      const std::string run = "rec" + std::to_string(getpid()) + "-baseline";
      tenax::CheckpointEngine::remove_memory(run);
      auto results = run_ranks(4, train_args(run, {}), {}, std::chrono::seconds(180));
      tenax::CheckpointEngine::remove_memory(run);
      for (const auto& r : results) EXPECT_EQ(r.exit_code, 0) << dump(results);
      return final_loss(all_output(results));
    }();
    return loss;
  }

  static std::string all_output(const std::vector<RankResult>& results) {
    std::string s;
    for (const auto& r : results) s += r.output;
    return s;
  }

  // The loss logged for the last step (NaN when absent).
  static double final_loss(const std::string& out) {
    std::smatch m;
    std::regex re("step +" + std::to_string(kSteps) + "/" + std::to_string(kSteps) +
                  " \\| loss ([0-9.]+)");
    return std::regex_search(out, m, re) ? std::stod(m[1]) : NAN;
  }

  // One recovery event per re-formation, the leader's.
  static std::vector<nlohmann::json> events(const std::string& out) {
    return tenax::testing::recovery_events(out);
  }

  // The job re-formed once, without w<victim>, and ended at the uninterrupted run's loss.
  static void expect_one_loss(const RankResult& r, int victim) {
    EXPECT_EQ(r.exit_code, 0) << r.output;
    auto evs = events(r.output);
    ASSERT_EQ(evs.size(), 1u) << r.output;
    EXPECT_EQ(evs[0]["lost"], nlohmann::json({"w" + std::to_string(victim)}));
    // Reported once by each member of the new generation, nothing twice.
    EXPECT_EQ(tenax::testing::recovery_events(r.output, /*leaders_only=*/false).size(),
              evs[0]["members"].size())
        << r.output;
    expect_baseline_loss(r.output);
  }

  // A killed worker restarted by its agent: either the survivors re-formed without it and it
  // joined later (two events), or it was back in time for the re-formation itself (one event,
  // nothing lost). Either way the job ends with all four. Events are printed by the rank that
  // leads the new generation: when the restarted worker kept its place as rank 0, the one event
  // is its own (cause "join", joined itself) rather than the survivors' ("failure").
  static void expect_back_to_four(const std::vector<nlohmann::json>& evs, const std::string& id,
                                  const std::string& out) {
    ASSERT_GE(evs.size(), 1u) << out;
    ASSERT_LE(evs.size(), 2u) << out;
    if (evs.size() == 2) {
      EXPECT_EQ(evs[0]["cause"], "failure") << out;
      EXPECT_EQ(evs[0]["lost"], nlohmann::json({id})) << out;
      EXPECT_EQ(evs[1]["cause"], "join") << out;
      EXPECT_EQ(evs[1]["joined"], nlohmann::json({id})) << out;
    } else {
      EXPECT_EQ(evs[0]["lost"], nlohmann::json::array()) << out;
      if (evs[0]["cause"] == "join") {
        EXPECT_EQ(evs[0]["joined"], nlohmann::json({id})) << out;
      } else {
        EXPECT_EQ(evs[0]["cause"], "failure") << out;
      }
    }
    EXPECT_EQ(evs.back()["members"].size(), 4u) << out;
  }

  static void expect_every_step_logged(const std::string& out) {
    for (int s = 1; s <= kSteps; ++s) {
      EXPECT_NE(out.find("step " + std::string(s < 10 ? "    " : "   ") + std::to_string(s) + "/"),
                std::string::npos)
          << "step " << s << " never completed\n" << out;
    }
  }

  // Same data, same global batch, same initial weights: the same loss up to float rounding.
  static void expect_baseline_loss(const std::string& out) {
    const double loss = final_loss(out);
    ASSERT_FALSE(std::isnan(loss)) << out;
    EXPECT_NEAR(loss, baseline(), 2e-3) << out;
  }

  // Four ranks with rank 0 killed at step 12 (more environment in `env`): the other three
  // re-form once without w0 and end on the uninterrupted run's loss.
  static void expect_rank_zero_left_behind(const std::vector<std::string>& train,
                                    std::map<std::string, std::string> env) {
    env["TENAX_FAULT"] = "kill@12:rank=0";
    auto results = run_ranks(4, train, env, std::chrono::seconds(180));
    EXPECT_EQ(results[0].exit_code, 128 + SIGKILL) << dump(results);
    for (int r : {1, 2, 3}) EXPECT_EQ(results[r].exit_code, 0) << dump(results);
    const std::string out = all_output(results);
    auto evs = events(out);
    ASSERT_EQ(evs.size(), 1u) << out;
    EXPECT_EQ(evs[0]["lost"], nlohmann::json({"w0"}));
    expect_baseline_loss(out);
  }

  // Four ranks with rank 2 killed at step 12: the others re-form once without w2 as dp=3, log
  // every step and end on the uninterrupted run's loss. Returns the recovery event.
  static nlohmann::json rank_two_left_behind(const std::vector<std::string>& train,
                                             std::string* out) {
    auto results = run_ranks(4, train, {{"TENAX_FAULT", "kill@12:rank=2"}},
                             std::chrono::seconds(180));
    EXPECT_EQ(results[2].exit_code, 128 + SIGKILL) << dump(results);
    for (int r : {0, 1, 3}) EXPECT_EQ(results[r].exit_code, 0) << dump(results);
    *out = all_output(results);
    auto evs = events(*out);
    EXPECT_EQ(evs.size(), 1u) << *out;
    EXPECT_NE(out->find("generation 2: 3 ranks dp=3"), std::string::npos) << *out;
    expect_every_step_logged(*out);
    expect_baseline_loss(*out);
    if (evs.empty()) return nlohmann::json::object();  // every field null
    EXPECT_EQ(evs[0]["lost"], nlohmann::json({"w2"})) << *out;
    return evs[0];
  }

  std::string run_;
};

TEST_F(RecoveryTest, ARankKilledAtStep12OfFourIsLeftBehindAndNoCompletedStepIsLost) {
  std::string out;
  auto ev = rank_two_left_behind(args(), &out);
  EXPECT_EQ(ev["cause"], "failure");
  EXPECT_EQ(ev["members"].size(), 3u);
  // Step 12 (index 11) failed; the restart point is the 11 steps completed before it.
  EXPECT_EQ(ev["failed_step"], 11);
  EXPECT_EQ(ev["resumed_step"], 11);
  EXPECT_EQ(ev["tier"], "memory");
  EXPECT_GT(ev["bytes"].get<int64_t>(), 0);
  EXPECT_LT(ev["detect_ms"].get<double>(), 3000.0) << out;
}

// Fully sharded (ZeRO-3): every rank holds a different quarter of the weights and AdamW state.
// The killed rank's quarter comes back from its replica in a peer's memory, the state is cut
// again into thirds, and the run ends at the uninterrupted (unsharded) run's loss.
TEST_F(RecoveryTest, FullyShardedARankKilledIsLeftBehindAndItsShardsAreReshardedFromAPeer) {
  std::string out;
  auto ev = rank_two_left_behind(args({"--fsdp"}), &out);
  // Only the lost rank held its quarter: it comes from the replica in a peer's memory, which
  // may be one snapshot behind the newest (the replica of step 11 may still have been on its way).
  EXPECT_EQ(ev["tier"], "peer") << out;
  EXPECT_GE(ev["resumed_step"].get<int>(), 10) << out;
}

TEST_F(RecoveryTest, KillingRankZeroLeavesTheOthersTraining) {
  expect_rank_zero_left_behind(args(), {});
}

TEST_F(RecoveryTest, KillingRankZeroOfATorchrunStyleLaunchLeavesItsStoreProcessServing) {
  // MASTER_PORT set: rank 0 starts the store, as a process of its own, not a thread of its own.
  const std::string port = std::to_string(tenax::testing::free_port());
  expect_rank_zero_left_behind(args(), {{"MASTER_ADDR", "127.0.0.1"},
                                        {"MASTER_PORT", port},
                                        {"TENAX_STORE_TOKEN", "torchrun-style"}});
}

TEST_F(RecoveryTest, OnAnEtcdStoreTheJobTrainsThroughTheLeadersDeathAndARankKilled) {
  if (!tenax::testing::EtcdCluster::available()) GTEST_SKIP() << "etcd is not installed";
  tenax::testing::EtcdCluster etcd(3);
  std::vector<std::string> cmd = {TENAXRUN, "--nproc-per-node", "4", "--nnodes", "1:1",
                                  "--rdzv-endpoint", etcd.address(run_), "env",
                                  "TENAX_FAULT=kill@16:rank=2"};
  for (const auto& a : args({"--min-workers", "2"})) cmd.push_back(a);
  Process job(cmd, {});
  // The etcd leader dies mid-job, before the rank does: the ranks fail over to the others.
  const int leader = etcd.leader();
  ASSERT_GE(leader, 0);
  for (int i = 0; i < 1200 && job.output().find("step     6/") == std::string::npos; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  ASSERT_NE(job.output().find("step     6/"), std::string::npos) << job.output();
  etcd.kill(leader);
  const int code = job.wait(std::chrono::seconds(180));
  const std::string out = job.output();
  EXPECT_EQ(code, 0) << out;
  auto evs = events(out);
  ASSERT_EQ(evs.size(), 1u) << out;
  EXPECT_EQ(evs[0]["lost"], nlohmann::json({"w2"}));
  EXPECT_EQ(evs[0]["tier"], "memory");
  // etcd would learn of the death only when w2's lease expires (5 s): its agent, which reaped
  // it, marked it gone at once, and the survivors re-formed without waiting.
  EXPECT_LT(evs[0]["rendezvous_ms"].get<double>(), 2500.0) << out;
  expect_every_step_logged(out);
  expect_baseline_loss(out);
}

TEST_F(RecoveryTest, AHungRankIsEvictedAfterTheHeartbeatTimeout) {
  auto results = run_ranks(4, args({"--heartbeat-timeout", "3"}),
                           {{"TENAX_FAULT", "hang@12:rank=1"}}, std::chrono::seconds(180),
                           /*stuck_rank=*/1);
  for (int r : {0, 2, 3}) EXPECT_EQ(results[r].exit_code, 0) << dump(results);
  const std::string out = all_output(results);
  auto evs = events(out);
  ASSERT_EQ(evs.size(), 1u) << out;
  EXPECT_EQ(evs[0]["lost"], nlohmann::json({"w1"}));
  EXPECT_NE(evs[0]["detected_by"].get<std::string>().find("heartbeat of w1 stopped"),
            std::string::npos) << out;
  // Detected by the heartbeat (3 s), long before the collective timeout (30 s).
  EXPECT_GT(evs[0]["detect_ms"].get<double>(), 2500.0) << out;
  EXPECT_LT(evs[0]["detect_ms"].get<double>(), 15000.0) << out;
  expect_baseline_loss(out);
}

TEST_F(RecoveryTest, TwoFailuresInARowShrinkTheJobTwice) {
  auto results = run_ranks(4, args(), {{"TENAX_FAULT", "kill@8:rank=3,kill@16:rank=1"}},
                           std::chrono::seconds(180));
  for (int r : {0, 2}) EXPECT_EQ(results[r].exit_code, 0) << dump(results);
  const std::string out = all_output(results);
  auto evs = events(out);
  ASSERT_EQ(evs.size(), 2u) << out;
  EXPECT_EQ(evs[0]["lost"], nlohmann::json({"w3"}));
  EXPECT_EQ(evs[1]["lost"], nlohmann::json({"w1"}));
  EXPECT_EQ(evs[1]["members"].size(), 2u);
  expect_every_step_logged(out);
  expect_baseline_loss(out);
}

TEST_F(RecoveryTest, AFailureDuringRecoveryIsRecoveredFromToo) {
  // Rank 3 dies at step 10; rank 1 dies while the survivors re-form.
  auto results = run_ranks(4, args(), {{"TENAX_FAULT", "kill@10:rank=3,kill@recovery:rank=1"}},
                           std::chrono::seconds(180));
  EXPECT_EQ(results[1].exit_code, 128 + SIGKILL) << dump(results);
  for (int r : {0, 2}) EXPECT_EQ(results[r].exit_code, 0) << dump(results);
  const std::string out = all_output(results);
  EXPECT_NE(out.find("fault injection: kill rank 1 during a recovery"), std::string::npos) << out;
  auto evs = events(out);
  ASSERT_GE(evs.size(), 1u) << out;
  EXPECT_EQ(evs.back()["members"].size(), 2u) << out;
  expect_every_step_logged(out);
  expect_baseline_loss(out);
}

TEST_F(RecoveryTest, DpTwoByTpTwoLosingARankGoesOnWithOneReplicaAndAStandby) {
  auto results = run_ranks(4, args({"--tp", "2"}), {{"TENAX_FAULT", "kill@12:rank=1"}},
                           std::chrono::seconds(180));
  for (int r : {0, 2, 3}) EXPECT_EQ(results[r].exit_code, 0) << dump(results);
  const std::string out = all_output(results);
  EXPECT_NE(out.find("generation 1: 4 ranks dp=2 tp=2"), std::string::npos) << out;
  EXPECT_NE(out.find("generation 2: 2 ranks dp=1 tp=2"), std::string::npos) << out;
  EXPECT_NE(out.find("is standby in generation 2"), std::string::npos) << out;
  auto evs = events(out);
  ASSERT_EQ(evs.size(), 1u) << out;
  EXPECT_EQ(evs[0]["resumed_step"], 11);
  expect_every_step_logged(out);
  expect_baseline_loss(out);
}

TEST_F(RecoveryTest, TooFewWorkersIsAClearErrorAndTheStateStaysInMemoryForARelaunch) {
  auto results = run_ranks(2, args({"--min-workers", "2", "--join-timeout", "2"}),
                           {{"TENAX_FAULT", "kill@8:rank=1"}}, std::chrono::seconds(120));
  EXPECT_EQ(results[0].exit_code, 1) << dump(results);
  EXPECT_NE(results[0].output.find("has 1 of the 2 members it needs after 2000 ms"),
            std::string::npos) << dump(results);
  // A relaunch with enough workers resumes after the last completed step, from memory.
  results = run_ranks(2, args(), {}, std::chrono::seconds(120));
  for (const auto& r : results) EXPECT_EQ(r.exit_code, 0) << dump(results);
  const std::string out = all_output(results);
  EXPECT_NE(out.find("resuming after step 7"), std::string::npos) << out;
  EXPECT_EQ(out.find("step     1/"), std::string::npos) << out;
  expect_every_step_logged(out + "step     1/step     2/step     3/step     4/step     5/"
                                 "step     6/step     7/");
  expect_baseline_loss(out);
}

TEST_F(RecoveryTest, AWorkerOfAnOldGenerationIsFencedOutAndRejoinsAsANewMember) {
  // Rank 1 hangs at step 8 and is evicted; resumed later, it finds its generation gone: it
  // cannot act in it, so it joins the job again and the job regrows to 4.
  const std::string token = "fence-token";
  tenax::StoreServer store("127.0.0.1", 0, token);
  std::map<std::string, std::string> env = {
      {"TENAX_STORE_ADDR", "127.0.0.1:" + std::to_string(store.port())},
      {"TENAX_STORE_TOKEN", token}, {"WORLD_SIZE", "4"}, {"LOCAL_WORLD_SIZE", "4"},
      {"TENAX_FAULT", "hang@8:rank=1"}};
  std::vector<Process> procs;
  for (int r = 0; r < 4; ++r) {
    env["RANK"] = env["LOCAL_RANK"] = std::to_string(r);
    procs.emplace_back(args({"--heartbeat-timeout", "2", "--steps", "40"}), env);
  }
  // Wait for the survivors' generation 2, then wake rank 1.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(90);
  auto anyone_says = [&](const std::string& text) {
    for (auto& p : procs) {
      if (p.output().find(text) != std::string::npos) return true;
    }
    return false;
  };
  while (!anyone_says("generation 2: 3 ranks") && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  ASSERT_TRUE(anyone_says("generation 2: 3 ranks")) << procs[0].output();
  procs[1].kill(SIGCONT);
  std::vector<RankResult> results;
  for (auto& p : procs) {
    const int code = p.wait(std::chrono::seconds(120));
    if (code < 0) p.kill(SIGKILL);
    results.push_back({code, p.output()});
  }
  for (const auto& r : results) EXPECT_EQ(r.exit_code, 0) << dump(results);
  // Its old generation's communicators refuse it; it rejoins, and the job regrows to 4.
  EXPECT_NE(results[1].output.find("w1: generation 1 failed"), std::string::npos)
      << dump(results);
  const std::string out = all_output(results);
  auto evs = events(out);
  ASSERT_EQ(evs.size(), 2u) << out;
  EXPECT_EQ(evs[1]["cause"], "join");
  EXPECT_EQ(evs[1]["joined"], nlohmann::json({"w1"}));
  EXPECT_EQ(evs[1]["members"].size(), 4u);
}

TEST_F(RecoveryTest, TenaxrunRestartsAKilledWorkerWhichRejoinsWithItsStateFromPeers) {
  std::vector<std::string> cmd = {TENAXRUN, "--nproc-per-node", "4", "--nnodes", "1:1",
                                  "--max-restarts", "1", "env", "TENAX_FAULT=kill@10:rank=2"};
  for (const auto& a : args({"--min-workers", "2", "--steps", "40"})) cmd.push_back(a);
  auto r = run_command(cmd, {}, std::chrono::seconds(180));
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("tenaxrun: worker w2 exited with status 137; restarting it (restart 1 "
                          "of 1)"),
            std::string::npos) << r.output;
  const auto evs = events(r.output);
  expect_back_to_four(evs, "w2", r.output);
  // The restarted worker's own event. Rejoining after the others moved on, its state came from
  // their memory; back in time for the re-formation itself, the step it still holds in its
  // own memory is the newest, and it may take that.
  std::smatch m;
  ASSERT_TRUE(std::regex_search(r.output, m,
                                std::regex("\\[rank 2\\] tenax INFO elastic: recovery (\\{[^\\n]*\\})")))
      << r.output;
  auto joiner = nlohmann::json::parse(m[1].str());
  if (evs.size() == 2) {
    EXPECT_EQ(joiner["tier"], "peer") << r.output;
  } else {
    EXPECT_TRUE(joiner["tier"] == "peer" || joiner["tier"] == "memory") << r.output;
  }
  EXPECT_GT(joiner["bytes"].get<int64_t>(), 0);
}

TEST_F(RecoveryTest, AWarmSpareTakesAKilledWorkersPlaceAndItsRestartWaitsAsTheNextSpare) {
  // Three workers train, a fourth waits as a spare. w1 dies at step 10: the survivors re-form
  // with the spare and stay at dp=3; restarted, w1 joins as the new spare without stopping
  // anyone (one re-formation in all).
  std::vector<std::string> cmd = {TENAXRUN, "--nproc-per-node", "3", "--spares", "1",
                                  "--nnodes", "1:1", "--max-restarts", "1", "env",
                                  "TENAX_FAULT=kill@10:rank=1"};
  for (const auto& a : args({"--min-workers", "2"})) cmd.push_back(a);
  auto r = run_command(cmd, {}, std::chrono::seconds(180));
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("tenaxrun: worker w1 exited with status 137; restarting it"),
            std::string::npos) << r.output;
  EXPECT_NE(r.output.find("generation 1: 3 ranks dp=3"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("generation 2: 3 ranks dp=3"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("w3 is standby in generation 1"), std::string::npos) << r.output;
  const auto evs = events(r.output);
  ASSERT_EQ(evs.size(), 1u) << r.output;
  EXPECT_EQ(evs[0]["cause"], "failure") << r.output;
  // The spare took w1's place, or (when the restarted w1 was back in time for the
  // re-formation) w1 kept it and w3 stayed the spare.
  EXPECT_TRUE(evs[0]["lost"] == nlohmann::json({"w1"}) || evs[0]["lost"].empty()) << r.output;
  EXPECT_EQ(evs[0]["resumed_step"], evs[0]["failed_step"]) << r.output;
  EXPECT_NE(r.output.find("llama_train: done, 24 steps, 1 re-formations"), std::string::npos)
      << r.output;
  expect_every_step_logged(r.output);
  expect_baseline_loss(r.output);
}

TEST_F(RecoveryTest, ARestartedWorkerMakesTheMeshWholeAndTheStandbyActiveAgain) {
  // dp=2 x tp=2 loses w1: dp=1 x tp=2 and a standby; w1 restarted rejoins: dp=2 x tp=2 again.
  std::vector<std::string> cmd = {TENAXRUN, "--nproc-per-node", "4", "--nnodes", "1:1",
                                  "--max-restarts", "1", "env", "TENAX_FAULT=kill@10:rank=1"};
  for (const auto& a : args({"--tp", "2", "--min-workers", "2", "--steps", "40"})) {
    cmd.push_back(a);
  }
  auto r = run_command(cmd, {}, std::chrono::seconds(180));
  EXPECT_EQ(r.exit_code, 0) << r.output;
  const auto evs = events(r.output);
  expect_back_to_four(evs, "w1", r.output);
  if (evs.size() == 2) {  // re-formed without w1 first: one replica and a standby
    EXPECT_NE(r.output.find("ranks dp=1 tp=2"), std::string::npos) << r.output;
    EXPECT_NE(r.output.find("is standby in generation"), std::string::npos) << r.output;
  }
  const size_t last_mesh = r.output.rfind("ranks dp=");
  ASSERT_NE(last_mesh, std::string::npos) << r.output;
  EXPECT_EQ(r.output.substr(last_mesh, 18), "ranks dp=2 tp=2 pp") << r.output;
  EXPECT_NE(r.output.find("llama_train: done, 40 steps"), std::string::npos) << r.output;
}

TEST_F(RecoveryTest, WithNothingInMemoryTheJobResumesFromTheDurableTier) {
  const std::string dir = ::testing::TempDir() + "/" + run_ + "-durable";
  std::filesystem::remove_all(dir);
  const std::vector<std::string> durable = {"--ckpt-durable", dir, "--ckpt-persist-every", "4"};
  auto with = [&](std::vector<std::string> extra) {
    extra.insert(extra.end(), durable.begin(), durable.end());
    return args(extra);
  };
  // A finished job removes its memory regions; what it persisted stays.
  auto results = run_ranks(2, with({"--steps", "12"}), {}, std::chrono::seconds(120));
  for (const auto& r : results) EXPECT_EQ(r.exit_code, 0) << dump(results);
  EXPECT_TRUE(std::filesystem::exists(dir + "/" + run_ + "/step-000000000012/manifest.json"));
  // Run longer, on 3 ranks: resumes from the durable step 12, resharded.
  results = run_ranks(3, with({}), {}, std::chrono::seconds(120));
  for (const auto& r : results) EXPECT_EQ(r.exit_code, 0) << dump(results);
  const std::string out = all_output(results);
  EXPECT_NE(out.find("resuming after step 12"), std::string::npos) << out;
  EXPECT_EQ(out.find("step    12/"), std::string::npos) << out;
  std::filesystem::remove_all(dir);
}

TEST_F(RecoveryTest, SigtermPersistsTheNewestStepDurablyAndARelaunchResumesFromItOnTheSameCurve) {
  const std::string dir = ::testing::TempDir() + "/" + run_ + "-durable";
  std::filesystem::remove_all(dir);
  // Persisting only at preemption: what the durable tier holds afterwards is that step.
  const std::vector<std::string> durable = {"--ckpt-durable", dir, "--ckpt-persist-every", "1000"};
  std::vector<std::string> cmd = {TENAXRUN, "--nproc-per-node", "4", "--nnodes", "1:1"};
  for (const auto& a : args(durable)) cmd.push_back(a);
  Process job(cmd, {});
  for (int i = 0; i < 1200 && job.output().find("step     8/") == std::string::npos; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  ASSERT_NE(job.output().find("step     8/"), std::string::npos) << job.output();
  const auto t0 = std::chrono::steady_clock::now();
  job.kill(SIGTERM);  // tenaxrun forwards it to every worker
  const int code = job.wait(std::chrono::seconds(60));
  const double stop_s =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const std::string out = job.output();
  ASSERT_EQ(code, 0) << out;
  EXPECT_LT(stop_s, 25.0) << out;
  std::smatch m;
  ASSERT_TRUE(std::regex_search(out, m, std::regex("preempted after (\\d+) of 24 steps"))) << out;
  const int stopped = std::stoi(m[1]);
  EXPECT_GE(stopped, 8);
  EXPECT_LT(stopped, kSteps);
  char name[32];
  std::snprintf(name, sizeof(name), "step-%012d", stopped);
  EXPECT_TRUE(std::filesystem::exists(dir + "/" + run_ + "/" + name + "/manifest.json")) << out;
  // Nothing left in memory: the relaunch must take the durable step, and end on the same loss
  // as a run never stopped.
  tenax::CheckpointEngine::remove_memory(run_);
  auto r = run_command(cmd, {}, std::chrono::seconds(180));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("resuming after step " + std::to_string(stopped)), std::string::npos)
      << r.output;
  EXPECT_EQ(r.output.find("step     1/"), std::string::npos) << r.output;
  expect_baseline_loss(r.output);
  std::filesystem::remove_all(dir);
}

TEST_F(RecoveryTest, TwoAgentsOnOneEndpointRunOneJobAndRegrowAfterARestart) {
  // As on two hosts: agent 0 hosts the store at the endpoint, agent 1 joins it; worker w3
  // (agent 1's second) dies at step 10, its agent restarts it, and it rejoins.
  const std::string endpoint = "127.0.0.1:" + std::to_string(tenax::testing::free_port());
  auto agent = [&](int node, bool host) {
    std::vector<std::string> cmd = {TENAXRUN, "--nproc-per-node", "2", "--nnodes", "1:2",
                                    "--node-rank", std::to_string(node), "--max-restarts", "1",
                                    "--rdzv-endpoint", endpoint};
    if (host) cmd.push_back("--host-store");
    cmd.insert(cmd.end(), {"env", "TENAX_FAULT=kill@10:rank=3"});
    // The first generation waits for all four (a long last call; it closes at max_workers).
    for (const auto& a : args({"--steps", "40", "--last-call", "20"})) cmd.push_back(a);
    return cmd;
  };
  const std::map<std::string, std::string> env = {{"TENAX_STORE_TOKEN", "two-agents"}};
  Process first(agent(0, true), env);
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  Process second(agent(1, false), env);
  const int code0 = first.wait(std::chrono::seconds(180));
  const int code1 = second.wait(std::chrono::seconds(60));
  const std::string out = first.output() + second.output();
  EXPECT_EQ(code0, 0) << out;
  EXPECT_EQ(code1, 0) << out;
  EXPECT_NE(second.output().find("tenaxrun: worker w3 exited with status 137; restarting it"),
            std::string::npos) << out;
  expect_back_to_four(events(out), "w3", out);
}

// mpirun --enable-recovery with rank `victim` killed at step 12.
RankResult run_mpirun_with_a_kill(const std::vector<std::string>& train, int victim) {
  std::vector<std::string> cmd = {"mpirun", "--oversubscribe", "--bind-to", "none",
                                  "--enable-recovery", "-np", "4", "-x",
                                  "TENAX_FAULT=kill@12:rank=" + std::to_string(victim)};
  cmd.insert(cmd.end(), train.begin(), train.end());
  return run_command(cmd, {{"OMPI_ALLOW_RUN_AS_ROOT", "1"},
                           {"OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1"}},
                     std::chrono::seconds(180));
}

TEST_F(RecoveryTest, MpirunWithEnableRecoveryShrinksWhenARankDies) {
  auto r = run_mpirun_with_a_kill(args(), 2);
  expect_one_loss(r, 2);
  EXPECT_NE(r.output.find("llama_train: done, 24 steps, 1 re-formations"), std::string::npos)
      << r.output;
}

TEST_F(RecoveryTest, MpirunSurvivesTheDeathOfRankZeroWhichStartedTheStore) {
  // Rank 0 started the store as a process of its own: it outlives rank 0.
  expect_one_loss(run_mpirun_with_a_kill(args(), 0), 0);
}

}  // namespace
