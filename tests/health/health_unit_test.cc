// The health checks' parts, in one process: the straggler score, the replica comparison, the
// deterministic GEMM, the hang watchdog's deadline, the preflight's quarantine, the policies.

#include <ATen/Context.h>
#include <ATen/ops/ones.h>
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <thread>

#include "tenax/health/hang_watch.h"
#include "tenax/health/replica_hash.h"
#include "tenax/health/straggler.h"
#include "support/process.h"
#include "tenax/comm/communicator.h"
#include "tenax/core/error.h"
#include "tenax/core/fault_injection.h"
#include "tenax/health/preflight.h"
#include "tenax/store/store.h"
#include "tenax/store/store_server.h"

namespace {

using namespace std::chrono_literals;

TEST(StragglerTest, ARankSlowerThanTheThresholdIsNamedAfterTheWindowAndTheSteps) {
  tenax::StragglerDetector d(1.5, 4, 3);
  int flagged_at = -1;
  for (int step = 0; step < 20 && flagged_at < 0; ++step) {
    const auto slow = d.add({0.1, 0.1, 0.25, 0.1});
    if (!slow.empty()) {
      EXPECT_EQ(slow, std::vector<int>{2});
      flagged_at = step;
    }
  }
  EXPECT_EQ(flagged_at, 5);  // the window is full at step 3: above there, at 4, and at 5
  EXPECT_NEAR(d.score(2), 2.5, 1e-9);
  EXPECT_NEAR(d.score(0), 1.0, 1e-9);
  EXPECT_TRUE(d.add({0.1, 0.1, 0.25, 0.1}).empty());  // named once each time it gets there
}

TEST(StragglerTest, NoOneIsNamedWithoutAMajorityToCompareAgainstOrBelowTheThreshold) {
  tenax::StragglerDetector two(1.5, 1, 1);
  EXPECT_TRUE(two.add({0.1, 1.0}).empty());
  tenax::StragglerDetector d(1.5, 2, 2);
  for (int i = 0; i < 10; ++i) EXPECT_TRUE(d.add({0.1, 0.14, 0.1, 0.12}).empty());
}

TEST(ReplicaTest, TheReplicaThatDiffersFromItsGroupsMajorityIsNamed) {
  // Ranks 0-2 hold one part (tp rank 0), 3-5 another (tp rank 1); rank 4 differs.
  EXPECT_EQ(tenax::replicas_that_differ({1, 1, 1, 2, 2, 2}, {7, 7, 7, 9, 8, 9}),
            std::vector<int>{4});
  EXPECT_TRUE(tenax::replicas_that_differ({1, 1}, {7, 8}).empty());  // no majority of 2
  EXPECT_TRUE(tenax::replicas_that_differ({1, 1, 1, 1}, {7, 7, 8, 8}).empty());
}

TEST(ReplicaTest, TheHashSeesOneChangedValueAndTheSignatureTheLayout) {
  tenax::StateDict a, b;
  a.add("w", at::ones({64}));
  b.add("w", at::ones({64}));
  EXPECT_EQ(tenax::state_hash(a), tenax::state_hash(b));
  EXPECT_EQ(tenax::state_signature(a), tenax::state_signature(b));
  b.tensor("w").tensor.view(-1)[17].add_(1e-6);
  EXPECT_NE(tenax::state_hash(a), tenax::state_hash(b));
  tenax::StateDict c;
  c.add_shard("w", at::ones({64}), {128}, {64});
  EXPECT_NE(tenax::state_signature(a), tenax::state_signature(c));
}

TEST(GemmTest, TheChecksumIsTheSameEachTimeAndOneFlippedValueChangesIt) {
  EXPECT_EQ(tenax::gemm_checksum(64), tenax::gemm_checksum(64));
  EXPECT_NE(tenax::gemm_checksum(64), tenax::gemm_checksum(64, /*corrupt=*/true));
  EXPECT_NE(tenax::gemm_checksum(64), tenax::gemm_checksum(65));
}

// The device path (what CUDA ranks run, here on the CPU device): the same inputs through ATen's
// matrix product, stable, one flipped value seen; its sums agree with the loop's to rounding,
// so the checksums of the two kinds differ and a job compares one kind only.
TEST(GemmTest, OnADeviceTheChecksumIsStableAndSeesOneFlippedValue) {
  EXPECT_EQ(tenax::device_gemm_checksum(64, "cpu"), tenax::device_gemm_checksum(64, "cpu"));
  EXPECT_NE(tenax::device_gemm_checksum(64, "cpu"),
            tenax::device_gemm_checksum(64, "cpu", /*corrupt=*/true));
  try {
    tenax::device_gemm_checksum(8, "gpu7");
    ADD_FAILURE() << "no error for a device that is not one";
  } catch (const tenax::ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("'gpu7' is not a device"), std::string::npos) << e.what();
  }
}

TEST(GemmTest, OnCudaTheDeviceChecksumIsStable) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device here";
  EXPECT_EQ(tenax::device_gemm_checksum(256, "cuda:0"), tenax::device_gemm_checksum(256, "cuda:0"));
  EXPECT_NE(tenax::device_gemm_checksum(256, "cuda:0"),
            tenax::device_gemm_checksum(256, "cuda:0", /*corrupt=*/true));
}

TEST(HangWatchTest, AStepPastItsDeadlineOutsideACollectiveIsReportedOnce) {
  auto waiting = std::make_shared<std::atomic<int>>(0);
  std::atomic<int> fired{0};
  std::string report;
  tenax::HangWatch w(5, 200ms, waiting, [&](const std::string& r) {
    report = r;
    ++fired;
  });
  EXPECT_EQ(w.deadline(), 600ms);  // three floors before 5 steps were seen
  for (int i = 0; i < 5; ++i) {
    w.step_started();
    std::this_thread::sleep_for(10ms);
    w.step_ended();
  }
  EXPECT_EQ(w.deadline(), 200ms);  // k × p99 (about 50 ms) is under the floor
  w.step_started();
  std::this_thread::sleep_for(1s);
  EXPECT_EQ(fired.load(), 1);
  EXPECT_NE(report.find("past its deadline of 200 ms"), std::string::npos) << report;
  EXPECT_NE(report.find("tid "), std::string::npos) << report;
}

TEST(HangWatchTest, AnEvaluationInsideAStepRunsOnItsOwnDeadlineNotTheSteps) {
  auto waiting = std::make_shared<std::atomic<int>>(0);
  std::atomic<int> fired{0};
  tenax::HangWatch w(5, 150ms, waiting, [&](const std::string&) { ++fired; });
  for (int i = 0; i < 5; ++i) {
    w.step_started();
    std::this_thread::sleep_for(5ms);
    w.step_ended();
  }
  ASSERT_EQ(w.deadline(), 150ms);
  w.step_started();
  {
    tenax::PhaseScope evaluating(tenax::Phase::kEvaluation);  // never seen: three floors
    std::this_thread::sleep_for(300ms);
  }
  std::this_thread::sleep_for(50ms);  // the step's own time is 50 ms: under its deadline
  w.step_ended();
  EXPECT_EQ(fired.load(), 0);
  // The step counted 50 ms, not 350: its deadline is now 5 × 50 ms.
  EXPECT_GE(w.deadline(tenax::Phase::kStep), 250ms);
  EXPECT_LT(w.deadline(tenax::Phase::kStep), 300ms);
}

TEST(HangWatchTest, AStepWaitingOnACollectiveIsLeftToItsPeersWatch) {
  auto waiting = std::make_shared<std::atomic<int>>(1);
  std::atomic<int> fired{0};
  tenax::HangWatch w(5, 100ms, waiting, [&](const std::string&) { ++fired; });
  w.step_started();
  std::this_thread::sleep_for(600ms);
  EXPECT_EQ(fired.load(), 0);
}

// Every thread's phases are watched, each against its own phase's deadline: a persist stuck on
// the checkpoint engine's thread (outside any wait) is reported, naming the phase and the
// thread, while the training thread's step goes on normally.
TEST(HangWatchTest, APersistStuckOnAnotherThreadIsReportedNamingItsThread) {
  std::string report;
  std::atomic<int> fired{0};
  auto waiting = std::make_shared<std::atomic<int>>(0);
  tenax::HangWatch w(5, 100ms, waiting, [&](const std::string& r) {
    report = r;
    ++fired;
  });
  std::thread persister([] {
    tenax::PhaseScope persisting(tenax::Phase::kPersist);
    std::this_thread::sleep_for(800ms);  // past 3 x 100 ms: stuck in its own work
  });
  for (int i = 0; i < 8; ++i) {  // the training thread's steps, well inside their deadline
    tenax::PhaseScope stepping(tenax::Phase::kStep);
    std::this_thread::sleep_for(50ms);
  }
  persister.join();
  ASSERT_EQ(fired.load(), 1);
  EXPECT_NE(report.find("the persist has run"), std::string::npos) << report;
  EXPECT_NE(report.find("its thread (tid "), std::string::npos) << report;
  EXPECT_NE(report.find("<- the stuck thread"), std::string::npos) << report;
}

// A new generation's steps start their durations afresh (three floors until five are seen).
TEST(HangWatchTest, ForgettingAPhasesDurationsGivesItTheStartingDeadlineAgain) {
  auto waiting = std::make_shared<std::atomic<int>>(0);
  tenax::HangWatch w(5, 100ms, waiting, [](const std::string&) {});
  for (int i = 0; i < 6; ++i) {
    w.step_started();
    w.step_ended();
  }
  EXPECT_EQ(w.deadline(tenax::Phase::kStep), 100ms);  // k x p99 of ~0 s: the floor
  w.forget(tenax::Phase::kStep);
  EXPECT_EQ(w.deadline(tenax::Phase::kStep), 300ms);
}

// A step blocked in a store call (waiting for a key another member sets) waits on others, as
// in a collective: the store's own timeout answers for it, not the hang watch. The watch is fed
// the real flag of this thread (tenax::communication_waits()).
TEST(HangWatchTest, AStepWaitingOnTheStoreIsLeftToTheStoresTimeout) {
  tenax::StoreServer server("127.0.0.1", 0, "secret");
  auto store = tenax::TcpStore::connect("127.0.0.1", server.port(), "secret", 5s);
  std::atomic<int> fired{0};
  tenax::HangWatch w(5, 100ms, tenax::communication_waits(),
                             [&](const std::string&) { ++fired; });
  w.step_started();
  // Looked at while the store still waits, 600 ms into the step (its deadline is 300 ms): once
  // the wait has ended the step is its own work again and may be reported at any moment, so a
  // look after get() returns would race with the watch.
  std::atomic<int> fired_while_waiting{-1};
  std::thread look([&] {
    std::this_thread::sleep_for(600ms);
    fired_while_waiting = fired.load();
  });
  EXPECT_THROW(store->get("never-set", 900ms), tenax::TimeoutError);
  look.join();
  EXPECT_EQ(fired_while_waiting.load(), 0);
  std::this_thread::sleep_for(700ms);  // the same step, now in its own work: reported
  EXPECT_EQ(fired.load(), 1);
}

TEST(PolicyTest, AnUnknownPolicyIsOneMessageNamingTheFlagAndTheValue) {
  EXPECT_EQ(tenax::parse_straggler_policy("evict"), tenax::StragglerPolicy::kEvict);
  EXPECT_EQ(tenax::parse_nonfinite_policy("rollback"), tenax::NonFinitePolicy::kRollback);
  try {
    tenax::parse_straggler_policy("kick", "--straggler-policy");
    FAIL();
  } catch (const tenax::ConfigError& e) {
    EXPECT_STREQ(e.what(),
                 "--straggler-policy 'kick' is not a policy (expected off, report or evict)");
  }
  EXPECT_THROW(tenax::parse_nonfinite_policy("ignore"), tenax::ConfigError);
}

// A host that fails twice within the window is quarantined: its next preflight fails for that
// alone until `tenax-health clear` lets it back.
TEST(QuarantineTest, AHostThatFailsTwiceIsKeptOutUntilAnOperatorClearsIt) {
  tenax::StoreServer server("127.0.0.1", 0, "secret");
  auto store = tenax::TcpStore::connect("127.0.0.1", server.port(), "secret", 5s);
  tenax::PreflightOptions o;
  o.expected = 1;
  o.gemm_size = 32;
  tenax::FaultInjector full("shm_full", 0);
  for (int i = 0; i < 2; ++i) {
    const auto r = tenax::run_preflight(store, "q" + std::to_string(i), "w0", "hostA", o, &full);
    EXPECT_FALSE(r.passed);
    ASSERT_FALSE(r.reasons.empty());
    EXPECT_NE(r.reasons[0].find("/dev/shm has 0 MiB free"), std::string::npos) << r.reasons[0];
  }
  const auto kept = tenax::run_preflight(store, "q2", "w0", "hostA", o, nullptr);
  EXPECT_FALSE(kept.passed);
  ASSERT_EQ(kept.reasons.size(), 1u);
  EXPECT_NE(kept.reasons[0].find("host hostA is quarantined"), std::string::npos);
  EXPECT_TRUE(tenax::run_preflight(store, "q3", "w0", "hostB", o, nullptr).passed);
  ASSERT_EQ(tenax::kept_out(*store, "q2").size(), 1u);

  const std::map<std::string, std::string> env = {
      {"TENAX_STORE_ADDR", "127.0.0.1:" + std::to_string(server.port())},
      {"TENAX_STORE_TOKEN", "secret"}};
  auto list = tenax::testing::run_command({TENAX_HEALTH, "quarantine"}, env);
  EXPECT_EQ(list.exit_code, 0);
  EXPECT_NE(list.output.find("hostA"), std::string::npos) << list.output;
  auto clear = tenax::testing::run_command({TENAX_HEALTH, "clear", "--host", "hostA"}, env);
  EXPECT_EQ(clear.exit_code, 0) << clear.output;
  EXPECT_TRUE(tenax::run_preflight(store, "q4", "w0", "hostA", o, nullptr).passed);
  EXPECT_EQ(tenax::testing::run_command({TENAX_HEALTH, "clear", "--host", "hostA"}, env).exit_code,
            1);
}

}  // namespace
