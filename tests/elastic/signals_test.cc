// The signals are the program's: an ElasticRunner installs no handler unless asked, chains to the
// program's own handler when asked, puts it back when run() returns, and preempt() stops a run at
// a step boundary from any thread. One member, in this process, against a real store server.

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <csignal>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include <ATen/ops/zeros.h>
#include <unistd.h>

#include "elastic/preemption.h"
#include "tenax/elastic/elastic.h"
#include "tenax/store/store.h"
#include "tenax/store/store_server.h"

using namespace std::chrono_literals;

namespace {

std::atomic<int> g_programs_handler_calls{0};
void programs_handler(int) { g_programs_handler_calls.fetch_add(1); }

using Handler = void (*)(int);

Handler current_sigterm() {
  struct sigaction now {};
  sigaction(SIGTERM, nullptr, &now);
  return (now.sa_flags & SA_SIGINFO) ? reinterpret_cast<Handler>(now.sa_sigaction)
                                     : now.sa_handler;
}

// The program's handler in place for the test's duration; the previous one back after it.
class ProgramsSigterm {
 public:
  ProgramsSigterm() {
    struct sigaction sa {};
    sa.sa_handler = programs_handler;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, &old_);
    g_programs_handler_calls = 0;
    tenax::detail::clear_preemption();
  }
  ~ProgramsSigterm() {
    sigaction(SIGTERM, &old_, nullptr);
    tenax::detail::clear_preemption();
  }

 private:
  struct sigaction old_ {};
};

// One tensor, one step at a time; `during_step` runs inside each step.
class CountingJob : public tenax::ElasticJob {
 public:
  std::function<void(int64_t)> during_step;
  void setup(const tenax::ElasticWorld&) override {
    if (state_.tensors().empty()) state_.add("w", weight_);
  }
  tenax::StateDict& state() override { return state_; }
  void restored(int64_t) override {}
  void train_step(int64_t step) override {
    weight_.add_(1);
    if (during_step) during_step(step);
  }

 private:
  at::Tensor weight_ = at::zeros({4});
  tenax::StateDict state_;
};

class SignalsTest : public ::testing::Test {
 protected:
  tenax::StoreServer server_{"127.0.0.1", 0, "t"};
  std::shared_ptr<tenax::Store> store_ =
      tenax::TcpStore::connect("127.0.0.1", server_.port(), "t", 10s);

  // A run of this process's own; a preempted run leaves its snapshots in memory: removed after.
  std::vector<std::string> runs_;
  ~SignalsTest() override {
    for (const auto& run : runs_) tenax::CheckpointEngine::remove_memory(run);
  }

  tenax::ElasticOptions options(const std::string& name) {
    const std::string run = name + "-" + std::to_string(::getpid());
    runs_.push_back(run);
    tenax::ElasticOptions o;
    o.member = "w0";
    o.rendezvous.run = run;
    o.rendezvous.min_workers = 1;
    o.rendezvous.max_workers = 1;
    o.rendezvous.last_call = 0ms;
    o.rendezvous.join_timeout = 10s;
    o.checkpoint.run = run;
    return o;
  }
};

TEST_F(SignalsTest, ARunInstallsNoHandlerUnlessAskedAndFinishes) {
  ProgramsSigterm program;
  CountingJob job;
  int checked = 0;
  job.during_step = [&](int64_t) {
    EXPECT_EQ(current_sigterm(), &programs_handler);
    ++checked;
  };
  tenax::ElasticRunner runner(options("signals-none"), store_);
  const tenax::RunResult r = runner.run(job, 3);
  EXPECT_EQ(r.reason, tenax::StopReason::kFinished);
  EXPECT_EQ(r.steps, 3);
  EXPECT_EQ(tenax::exit_code(r.reason), 0);
  EXPECT_EQ(checked, 3);
}

TEST_F(SignalsTest, AskedItPreemptsOnSigtermCallsTheProgramsHandlerAndPutsItBack) {
  ProgramsSigterm program;
  CountingJob job;
  job.during_step = [&](int64_t step) {
    EXPECT_NE(current_sigterm(), &programs_handler);  // tenax's, while run() trains
    if (step == 1) std::raise(SIGTERM);
  };
  tenax::ElasticOptions o = options("signals-asked");
  o.handle_sigterm = true;
  tenax::ElasticRunner runner(o, store_);
  const tenax::RunResult r = runner.run(job, 10);
  EXPECT_EQ(r.reason, tenax::StopReason::kPreempted);
  // Agreed on at the next boundary (before step 2, 0-based); that step is the last, saved.
  EXPECT_EQ(r.steps, 3);
  EXPECT_EQ(g_programs_handler_calls.load(), 1);
  EXPECT_EQ(current_sigterm(), &programs_handler);
  EXPECT_EQ(tenax::detail::preemption_requested(), 0) << "the request outlived its answer";
}

TEST_F(SignalsTest, PreemptFromAnotherThreadStopsAtTheNextBoundary) {
  ProgramsSigterm program;
  CountingJob job;
  job.during_step = [&](int64_t step) {
    if (step == 4) std::thread([] { tenax::ElasticRunner::preempt(); }).join();
  };
  tenax::ElasticRunner runner(options("signals-preempt"), store_);
  const tenax::RunResult r = runner.run(job, 10);
  EXPECT_EQ(r.reason, tenax::StopReason::kPreempted);
  EXPECT_EQ(r.steps, 6);
  EXPECT_EQ(g_programs_handler_calls.load(), 0);
}

TEST(StopReasonTest, EachReasonHasItsNameAndTheDocumentedExitCode) {
  using tenax::StopReason;
  const std::vector<std::tuple<StopReason, std::string, int>> table = {
      {StopReason::kFinished, "finished", 0}, {StopReason::kPreempted, "preempted", 0},
      {StopReason::kFenced, "fenced", 75},    {StopReason::kEvicted, "evicted", 76},
      {StopReason::kRemoved, "removed", 77},  {StopReason::kHung, "hung", 77}};
  for (const auto& [reason, name, code] : table) {
    EXPECT_EQ(tenax::to_string(reason), name);
    EXPECT_EQ(tenax::exit_code(reason), code) << name;
  }
  EXPECT_EQ(tenax::kFencedExitCode, 75);
  EXPECT_EQ(tenax::kUnhealthyExitCode, 76);
  EXPECT_EQ(tenax::kRemovedExitCode, 77);
}

}  // namespace
