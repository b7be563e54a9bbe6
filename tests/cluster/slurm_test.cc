// A real Slurm cluster (slurmctld, one slurmd per host, munge: tools/simslurm) on the simulated
// cluster, running examples/slurm/llama_elastic.sbatch as users would: bootstrap from Slurm's
// environment alone, a task killed (rank 0, which started the store), and graceful preemption
// by `scancel --signal=TERM` followed by a resubmission on other hosts. Skipped with one line
// where it cannot run (not root, no namespaces, no slurm-wlm or munge).

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <regex>
#include <sstream>
#include <thread>

#include "support/process.h"
#include "support/recovery_events.h"
#include "support/sim_cluster.h"
#include "tenax/checkpoint/engine.h"

using tenax::testing::dump;
using tenax::testing::RankResult;
using tenax::testing::run_command;
using tenax::testing::run_ranks;
using tenax::testing::SimCluster;

namespace {

constexpr int kSteps = 24;

std::string read_file(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

double final_loss(const std::string& out) {
  std::smatch m;
  const std::regex re("step +" + std::to_string(kSteps) + "/" + std::to_string(kSteps) +
                      " \\| loss ([0-9.]+)");
  return std::regex_search(out, m, re) ? std::stod(m[1]) : NAN;
}

// The llama_train flags after the batch script's own (same in every run here).
std::vector<std::string> train_flags() {
  return {"--preset", "tiny", "--global-batch", "12", "--micro-batch", "4",
          "--log-interval", "1", "--last-call", "5"};
}

class SlurmTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string why = SimCluster::unavailable();
    for (const char* bin : {"/usr/sbin/slurmctld", "/usr/sbin/slurmd", "/usr/sbin/munged"}) {
      if (why.empty() && ::access(bin, X_OK) != 0) {
        why = std::string(bin) + " is not installed (slurm-wlm, munge)";
      }
    }
    if (!why.empty()) GTEST_SKIP() << why;
    cluster_ = std::make_unique<SimCluster>(std::vector<std::string>{"h1", "h2", "h3"});
    auto up = run_command({SIMSLURM, "up", cluster_->dir(), "2", "h1", "h2", "h3"}, {},
                          std::chrono::seconds(90));
    ASSERT_EQ(up.exit_code, 0) << up.output;
    dir_ = cluster_->dir() + "/jobs";
    std::filesystem::create_directories(dir_);
    run_ = "slurm" + std::to_string(::getpid());
  }
  void TearDown() override {
    cluster_.reset();  // every daemon and job goes with its host
    tenax::CheckpointEngine::remove_memory(run_);
  }

  // A Slurm client command on the controller's host.
  RankResult slurm(std::vector<std::string> argv,
                   std::chrono::milliseconds timeout = std::chrono::seconds(60)) {
    argv.insert(argv.begin(), {SIMSLURM, "run", cluster_->dir()});
    return run_command(argv, {}, timeout);
  }

  // sbatch of the example script on `nodes`, output to `out`, with `env` and `extra` flags.
  std::vector<std::string> sbatch(const std::string& nodes, const std::string& out,
                                  const std::map<std::string, std::string>& env,
                                  const std::vector<std::string>& extra, bool wait) {
    std::vector<std::string> argv = {"env", "LLAMA_TRAIN=" + std::string(LLAMA_TRAIN),
                                     "DATA=" + std::string(LLAMA_CORPUS) + "/train.bin",
                                     "CKPT_DIR=" + dir_ + "/durable",
                                     "STEPS=" + std::to_string(kSteps), "RUN=" + run_};
    for (const auto& [k, v] : env) argv.push_back(k + "=" + v);
    argv.insert(argv.end(), {"sbatch", wait ? "--wait" : "--parsable", "-N", "2", "-w", nodes,
                             "--ntasks-per-node=2", "--output=" + out, SBATCH_SCRIPT});
    for (const auto& f : train_flags()) argv.push_back(f);
    argv.insert(argv.end(), extra.begin(), extra.end());
    return argv;
  }

  // The loss after kSteps of the same job uninterrupted on 4 ranks of one host (loopback).
  double baseline() {
    std::vector<std::string> argv = {LLAMA_TRAIN, "--elastic", "--steps", std::to_string(kSteps),
                                     "--data", std::string(LLAMA_CORPUS) + "/train.bin",
                                     "--ckpt-run", run_ + "-base"};
    for (const auto& f : train_flags()) argv.push_back(f);
    auto results = run_ranks(4, argv, {}, std::chrono::seconds(180));
    tenax::CheckpointEngine::remove_memory(run_ + "-base");
    std::string out;
    for (const auto& r : results) out += r.output;
    return final_loss(out);
  }

  std::unique_ptr<SimCluster> cluster_;
  std::string dir_, run_;
};

TEST_F(SlurmTest, SbatchTrainsFromSlurmsEnvironmentAloneAndGoesOnWhenRankZeroIsKilled) {
  // Rank 0 (which started the store, as a process of its own) dies at step 8; srun
  // --kill-on-bad-exit=0 (the script's) leaves the other tasks, which re-form and finish.
  const std::string out = dir_ + "/killed.out";
  auto r = slurm(sbatch("h1,h2", out, {{"TENAX_FAULT", "kill@8:rank=0"}}, {}, true),
                 std::chrono::seconds(240));
  const std::string log = read_file(out);
  EXPECT_NE(log.find("generation 1: 4 ranks"), std::string::npos) << r.output << log;
  EXPECT_NE(log.find("hosts by rank: h1 h1 h2 h2"), std::string::npos) << log;
  EXPECT_NE(log.find("srun: error: h1: task 0: Killed"), std::string::npos) << log;
  const auto evs = tenax::testing::recovery_events(log);
  ASSERT_EQ(evs.size(), 1u) << log;
  const auto& ev = evs.front();
  EXPECT_EQ(ev["lost"], nlohmann::json({"w0"})) << log;
  EXPECT_EQ(ev["tier"], "memory") << log;
  EXPECT_NE(log.find("llama_train: done, 24 steps, 1 re-formations"), std::string::npos) << log;
  const double loss = final_loss(log);
  ASSERT_FALSE(std::isnan(loss)) << log;
  EXPECT_NEAR(loss, baseline(), 2e-3) << log;
}

TEST_F(SlurmTest, ScancelSignalTermPersistsTheNewestStepAndAResubmissionElsewhereResumesFromIt) {
  const std::string out = dir_ + "/preempted.out";
  auto submitted = slurm(sbatch("h1,h2", out, {}, {"--ckpt-persist-every", "1000"}, false));
  ASSERT_EQ(submitted.exit_code, 0) << submitted.output;
  const std::string job = std::regex_replace(submitted.output, std::regex("[^0-9]"), "");
  ASSERT_FALSE(job.empty()) << submitted.output;
  for (int i = 0; i < 1800 && read_file(out).find("step     8/") == std::string::npos; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  ASSERT_NE(read_file(out).find("step     8/"), std::string::npos) << read_file(out);
  const auto t0 = std::chrono::steady_clock::now();
  auto cancel = slurm({"scancel", "--signal=TERM", job});
  ASSERT_EQ(cancel.exit_code, 0) << cancel.output;
  bool gone = false;
  for (int i = 0; i < 300 && !gone; ++i) {
    gone = slurm({"squeue", "-h", "-j", job}).output.find(job) == std::string::npos;
    if (!gone) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  const double stop_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const std::string log = read_file(out);
  ASSERT_TRUE(gone) << log;
  EXPECT_LT(stop_s, 30.0) << log;
  std::smatch m;
  ASSERT_TRUE(std::regex_search(log, m, std::regex("preempted after (\\d+) of 24 steps"))) << log;
  const int stopped = std::stoi(m[1]);
  char step_dir[32];
  std::snprintf(step_dir, sizeof(step_dir), "step-%012d", stopped);
  EXPECT_TRUE(std::filesystem::exists(dir_ + "/durable/" + run_ + "/" + step_dir + "/manifest.json"))
      << log;

  // Resubmitted on h2 and h3, with the memory of h1 and h2 wiped: the durable step is all there
  // is. The loss curve goes on where it stopped.
  for (const char* h : {"h1", "h2"}) cluster_->run(h, {"sh", "-c", "rm -rf /dev/shm/*"});
  const std::string out2 = dir_ + "/resumed.out";
  auto r = slurm(sbatch("h2,h3", out2, {}, {"--ckpt-persist-every", "1000"}, true),
                 std::chrono::seconds(240));
  const std::string log2 = read_file(out2);
  EXPECT_EQ(r.exit_code, 0) << r.output << log2;
  EXPECT_NE(log2.find("hosts by rank: h2 h2 h3 h3"), std::string::npos) << log2;
  EXPECT_NE(log2.find("resuming after step " + std::to_string(stopped)), std::string::npos) << log2;
  EXPECT_EQ(log2.find("step     1/"), std::string::npos) << log2;
  const double loss = final_loss(log2);
  ASSERT_FALSE(std::isnan(loss)) << log2;
  EXPECT_NEAR(loss, baseline(), 2e-3) << log2;
}

}  // namespace
