// Communicators across real processes on loopback sockets: correctness against a single-process
// reference, sub-communicators, failure semantics, bad input, bootstrap and launchers.

#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <regex>
#include <thread>

#include "support/process.h"
#include "support/rank_checks.h"

using namespace std::chrono_literals;
using tenax::testing::dump;
using tenax::testing::expect_all_pass;
using tenax::testing::Process;
using tenax::testing::RankResult;
using tenax::testing::run_command;
using tenax::testing::run_ranks;

namespace {

class CollectivesTest : public ::testing::TestWithParam<int> {};

TEST_P(CollectivesTest, EveryCollectiveAndDtypeMatchesTheSingleProcessReference) {
  expect_all_pass(run_ranks(GetParam(), {COMM_WORKER, "collectives"}), "collectives");
}

INSTANTIATE_TEST_SUITE_P(WorldSizes, CollectivesTest, ::testing::Values(1, 2, 3, 4),
                         [](const auto& info) { return "world" + std::to_string(info.param); });

// Ranks of one host all-reduce through shared memory; TENAX_SHM=0 keeps them on Gloo's ring
// over sockets, the path between hosts.
class SocketCollectivesTest : public ::testing::TestWithParam<int> {};

TEST_P(SocketCollectivesTest, EveryCollectiveAndDtypeMatchesTheReferenceWithoutSharedMemory) {
  expect_all_pass(run_ranks(GetParam(), {COMM_WORKER, "collectives"}, {{"TENAX_SHM", "0"}}),
                  "collectives");
}

INSTANTIATE_TEST_SUITE_P(WorldSizes, SocketCollectivesTest, ::testing::Values(2, 3),
                         [](const auto& info) { return "world" + std::to_string(info.param); });

TEST(SplitTest, SplitFormsOrderedSubgroupsAndNegativeColorJoinsNone) {
  expect_all_pass(run_ranks(4, {COMM_WORKER, "split"}), "split");
  expect_all_pass(run_ranks(3, {COMM_WORKER, "split"}), "split");
}

TEST(FailureTest, KilledPeerIsReportedWithinOneSecondAndSurvivorsRebuild) {
  for (const char* shm : {"1", "0"}) {  // shared memory, then sockets
    SCOPED_TRACE(std::string("TENAX_SHM=") + shm);
    auto results = run_ranks(
        4, {COMM_WORKER, "kill"}, {{"VICTIM", "2"}, {"TENAX_TIMEOUT", "20"}, {"TENAX_SHM", shm}});
    EXPECT_EQ(results[2].exit_code, 128 + SIGKILL) << dump(results);
    for (int r : {0, 1, 3}) {
      EXPECT_EQ(results[r].exit_code, 0) << dump(results);
      EXPECT_NE(results[r].output.find("RECOVERED"), std::string::npos) << dump(results);
    }
  }
}

TEST(FailureTest, StoppedPeerTimesOutNamingIt) {
  const int n = 3, victim = 1;
  for (const char* shm : {"1", "0"}) {  // shared memory, then sockets
    SCOPED_TRACE(std::string("TENAX_SHM=") + shm);
    std::map<std::string, std::string> env = {
        {"VICTIM", std::to_string(victim)}, {"TENAX_TIMEOUT", "2"}, {"TENAX_SHM", shm}};
    // The stopped rank never exits by itself: it is killed once the others are done.
    auto results = run_ranks(n, {COMM_WORKER, "hang"}, env, 30s, victim);
    for (int r = 0; r < n; ++r) {
      if (r == victim) continue;
      EXPECT_EQ(results[r].exit_code, 0) << dump(results);
      EXPECT_NE(results[r].output.find("caught TimeoutError"), std::string::npos)
          << dump(results);
    }
  }
}

TEST(FailureTest, AbortFromAnotherThreadEndsStuckOperationsOnEveryRank) {
  expect_all_pass(run_ranks(2, {COMM_WORKER, "abort"}, {{"TENAX_TIMEOUT", "30"}}, 20s), "abort");
}

TEST(FailureTest, AnAbortedCommunicatorIsDestroyedAtOnceAndItsThreadEndsByTheTimeout) {
  expect_all_pass(run_ranks(2, {COMM_WORKER, "destroy_aborted"}, {{"TENAX_TIMEOUT", "3"}}, 30s),
                  "destroy_aborted");
}

TEST(FailureTest, ACallOnABrokenCommunicatorIsRefusedAndCountedAsAnError) {
  expect_all_pass(run_ranks(2, {COMM_WORKER, "refused_counted"}, {}, 30s), "refused_counted");
}

TEST(FailureTest, RankZeroDyingLeavesTheStoreItStartedServingTheOthers) {
  // MASTER_PORT: rank 0 starts the store, as a process of its own (the store's own death is a
  // clear error: StoreServerProcess.KilledServerIsAClearErrorNotAHang).
  auto port = std::to_string(tenax::testing::free_port());
  auto results = run_ranks(2, {COMM_WORKER, "store_starter_dies"},
                           {{"MASTER_ADDR", "127.0.0.1"}, {"MASTER_PORT", port}}, 30s);
  EXPECT_EQ(results[0].exit_code, 128 + SIGKILL) << dump(results);
  EXPECT_EQ(results[1].exit_code, 0) << dump(results);
  EXPECT_NE(results[1].output.find("store outlived rank 0"), std::string::npos) << dump(results);
}

TEST(BootstrapTest, TheStoreProcessIsTheTenaxStoreProgramStartedBesideLibTorchsThreads) {
  auto port = std::to_string(tenax::testing::free_port());
  auto r = run_command({COMM_WORKER, "store_beside_threads"},
                       {{"RANK", "0"}, {"WORLD_SIZE", "1"}, {"MASTER_ADDR", "127.0.0.1"},
                        {"MASTER_PORT", port}},
                       60s);
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("PASS store_beside_threads"), std::string::npos) << r.output;
  // Linked against the store layer alone.
  auto libs = run_command({"ldd", TENAX_STORE_BIN});
  EXPECT_EQ(libs.exit_code, 0) << libs.output;
  EXPECT_EQ(libs.output.find("torch"), std::string::npos) << libs.output;
}

// Settings through options: the environment reaches a layer only where the launch edge builds
// its options (connect(), init(), the from_environment builders), and a program's own choice
// stands.
TEST(LaunchEdgeTest, LayersTakeTheirOptionsAndOnlyTheLaunchEdgeReadsTheEnvironment) {
  const auto dir = std::filesystem::temp_directory_path() /
                   ("tenax-launch-edge-" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  auto r = run_command({COMM_WORKER, "launch_edge"},
                       {{"TENAX_TIMEOUT", "7"},
                        {"TENAX_LOG_FORMAT", "json"},
                        {"TENAX_FLIGHT_DIR", dir.string()},
                        {"TENAX_STORE_MAX_FRAME", std::to_string(1 << 20)}},
                       60s);
  std::filesystem::remove_all(dir);
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("PASS launch_edge"), std::string::npos) << r.output;
}

TEST(BootstrapTest, AMissingStoreProgramIsAClearErrorNamingTenaxStoreBin) {
  auto port = std::to_string(tenax::testing::free_port());
  auto r = run_command({COMM_WORKER, "init"},
                       {{"RANK", "0"}, {"WORLD_SIZE", "1"}, {"MASTER_ADDR", "127.0.0.1"},
                        {"MASTER_PORT", port}, {"TENAX_STORE_BIN", "/nonexistent/tenax-store"}},
                       60s);
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_NE(r.output.find("cannot find the tenax-store program (looked at "
                          "/nonexistent/tenax-store): set TENAX_STORE_BIN"),
            std::string::npos)
      << r.output;
}

TEST(WaitTimeTest, CommunicationWaitTimeIsTheCallingThreadsOnly) {
  expect_all_pass(run_ranks(2, {COMM_WORKER, "wait_time_per_thread"}), "wait_time_per_thread");
}

TEST(BadInputTest, EveryBadArgumentIsAClearErrorNamingRankAndTensor) {
  expect_all_pass(run_ranks(3, {COMM_WORKER, "bad_input"}), "bad_input");
}

TEST(BootstrapTest, RankOutsideTheWorldIsAConfigErrorNamingTheVariable) {
  auto r = run_command({COMM_WORKER, "init"},
                       {{"RANK", "5"}, {"WORLD_SIZE", "4"}, {"MASTER_ADDR", "127.0.0.1"},
                        {"MASTER_PORT", "1"}});
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_NE(r.output.find("RANK=5 is out of range for WORLD_SIZE=4"), std::string::npos) << r.output;
  r = run_command({COMM_WORKER, "init"}, {{"RANK", "0"}, {"WORLD_SIZE", "0"}});
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_NE(r.output.find("WORLD_SIZE=0"), std::string::npos) << r.output;
}

TEST(BootstrapTest, SingleProcessWithNoEnvironmentIsWorldSizeOne) {
  auto r = run_command({"env", "-u", "RANK", "-u", "WORLD_SIZE", "-u", "OMPI_COMM_WORLD_RANK",
                        "-u", "SLURM_PROCID", COMM_WORKER, "init"});
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("launcher=single rank=0 size=1"), std::string::npos) << r.output;
}

TEST(BootstrapTest, SlurmEnvironmentIsRecognised) {
  const int n = 2;
  auto port = std::to_string(tenax::testing::free_port());
  std::vector<Process> procs;
  for (int r = 0; r < n; ++r) {
    procs.emplace_back(std::vector<std::string>{COMM_WORKER, "init"},
                       std::map<std::string, std::string>{{"SLURM_PROCID", std::to_string(r)},
                                                          {"SLURM_NTASKS", "2"},
                                                          {"SLURM_LOCALID", std::to_string(r)},
                                                          {"MASTER_ADDR", "127.0.0.1"},
                                                          {"MASTER_PORT", port}});
  }
  for (int r = 0; r < n; ++r) {
    EXPECT_EQ(procs[r].wait(60s), 0) << procs[r].output();
    EXPECT_NE(procs[r].output().find("launcher=slurm rank=" + std::to_string(r) + " size=2"),
              std::string::npos)
        << procs[r].output();
  }
}

TEST(LauncherTest, TenaxrunStartsRanksAndPrefixesTheirOutput) {
  auto r = run_command({TENAXRUN, "--nproc-per-node", "4", COMM_WORKER, "init"});
  EXPECT_EQ(r.exit_code, 0) << r.output;
  for (int k = 0; k < 4; ++k) {
    EXPECT_NE(r.output.find("[rank " + std::to_string(k) + "] launcher=tenaxrun rank=" +
                            std::to_string(k) + " size=4"),
              std::string::npos)
        << r.output;
  }
}

// As torchrun does, N workers share the host's cores (OpenMP and OpenBLAS threads) instead of
// each taking them all; an OMP_NUM_THREADS the user set is left alone, as is a lone worker.
TEST(LauncherTest, TenaxrunSharesTheCoresAmongItsWorkersUnlessOmpNumThreadsIsSet) {
  const std::vector<std::string> echo = {"sh", "-c", "echo threads=${OMP_NUM_THREADS:-unset}"};
  auto launch = [&](int workers, const std::map<std::string, std::string>& env) {
    // Whatever the test's own environment says (the sanitizer runs set OMP_NUM_THREADS).
    std::vector<std::string> argv = {"env", "-u", "OMP_NUM_THREADS"};
    for (const auto& [k, v] : env) argv.push_back(k + "=" + v);
    argv.insert(argv.end(), {TENAXRUN, "--nproc-per-node", std::to_string(workers)});
    argv.insert(argv.end(), echo.begin(), echo.end());
    auto r = run_command(argv);
    EXPECT_EQ(r.exit_code, 0) << r.output;
    return r.output;
  };
  const unsigned cores = std::max(1u, std::thread::hardware_concurrency());
  const std::string shared = std::to_string(std::max(1u, cores / 3));
  std::string out = launch(3, {});
  for (int k = 0; k < 3; ++k) {
    EXPECT_NE(out.find("[rank " + std::to_string(k) + "] threads=" + shared), std::string::npos)
        << out;
  }
  EXPECT_NE(out.find("tenaxrun: OMP_NUM_THREADS=" + shared + " for each of the 3 workers"),
            std::string::npos)
      << out;
  out = launch(3, {{"OMP_NUM_THREADS", "5"}});
  EXPECT_NE(out.find("[rank 2] threads=5"), std::string::npos) << out;
  EXPECT_EQ(out.find("tenaxrun: OMP_NUM_THREADS"), std::string::npos) << out;
  out = launch(1, {});
  EXPECT_NE(out.find("[rank 0] threads=unset"), std::string::npos) << out;
}

TEST(LauncherTest, TenaxrunExitsWithTheFirstFailureAndStopsTheOthers) {
  auto t0 = std::chrono::steady_clock::now();
  auto r = run_command({TENAXRUN, "--nproc-per-node", "3", "sh", "-c",
                        "if [ $RANK = 1 ]; then exit 3; else sleep 30; fi"});
  EXPECT_EQ(r.exit_code, 3) << r.output;
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 15s);
  EXPECT_NE(r.output.find("rank 1 exited with status 3"), std::string::npos) << r.output;
}

TEST(LauncherTest, TenaxrunForwardsSigtermToEveryRank) {
  Process run({TENAXRUN, "--nproc-per-node", "2", "sh", "-c",
               "trap 'echo got TERM; exit 5' TERM; echo ready; while :; do sleep 0.1; done"},
              {});
  for (int i = 0; i < 500; ++i) {
    auto out = run.output();
    if (out.find("[rank 0] ready") != std::string::npos &&
        out.find("[rank 1] ready") != std::string::npos) {
      break;
    }
    std::this_thread::sleep_for(10ms);
  }
  run.kill(SIGTERM);
  EXPECT_EQ(run.wait(10s), 5) << run.output();
  EXPECT_NE(run.output().find("[rank 0] got TERM"), std::string::npos) << run.output();
  EXPECT_NE(run.output().find("[rank 1] got TERM"), std::string::npos) << run.output();
}

TEST(LauncherTest, TenaxrunRejectsBadFlagsClearly) {
  auto r = run_command({TENAXRUN, "--nproc-per-node", "zero", "true"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.output.find("--nproc-per-node must be a positive integer"), std::string::npos)
      << r.output;
}

TEST(LauncherTest, TenaxrunTakesFlagsWithDashesUnderscoresOrAnEqualsSign) {
  for (const std::vector<std::string>& flags :
       {std::vector<std::string>{"--nproc-per-node", "2"}, {"--nproc_per_node=2"},
        {"--nproc-per-node=2", "--timeout", "9", "--"}}) {
    std::vector<std::string> cmd = {TENAXRUN};
    cmd.insert(cmd.end(), flags.begin(), flags.end());
    cmd.insert(cmd.end(), {"sh", "-c", "echo rank $RANK of $WORLD_SIZE timeout ${TENAX_TIMEOUT:-none}"});
    auto r = run_command(cmd);
    EXPECT_EQ(r.exit_code, 0) << r.output;
    EXPECT_NE(r.output.find("[rank 1] rank 1 of 2"), std::string::npos) << r.output;
  }
  auto r = run_command({TENAXRUN, "--nproc-per-node=2", "--timeout", "9", "sh", "-c",
                        "echo timeout $TENAX_TIMEOUT"});
  EXPECT_NE(r.output.find("[rank 0] timeout 9"), std::string::npos) << r.output;
}

TEST(LauncherTest, MpirunBootstrapsWithNoOtherConfiguration) {
  auto r = run_command({"mpirun", "--oversubscribe", "-np", "4", COMM_WORKER, "init"},
                       {{"OMPI_ALLOW_RUN_AS_ROOT", "1"}, {"OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1"}});
  EXPECT_EQ(r.exit_code, 0) << r.output;
  for (int k = 0; k < 4; ++k) {
    EXPECT_NE(r.output.find("launcher=mpirun rank=" + std::to_string(k) + " size=4"),
              std::string::npos)
        << r.output;
  }
}

TEST(NcclTest, CudaCollectivesMatchTheReferenceOrSkipWithoutAGpu) {
  auto r = run_command({COMM_WORKER, "nccl"});
  if (r.exit_code == 77) GTEST_SKIP() << r.output;
  EXPECT_EQ(r.exit_code, 0) << r.output;
}

// The benchmark's #wrong column checks every result; both launchers must give 0.
// One collective per test: each is one mpirun launch of four ranks, which takes ~35 s under
// AddressSanitizer's slow unwinder, so all seven in one test outran its time limit there.
class MpirunCollectiveTest : public ::testing::TestWithParam<const char*> {};

TEST_P(MpirunCollectiveTest, FourRanksHaveNoWrongValues) {
  const char* coll = GetParam();
  auto r = run_command({"mpirun", "--oversubscribe", "-np", "4", COLLECTIVE_PERF, "-b", "4K", "-e",
                        "256K", "-f", "8", "-n", "2", "-w", "1", "-c", "1", "--coll", coll},
                       {{"OMPI_ALLOW_RUN_AS_ROOT", "1"}, {"OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1"}});
  EXPECT_EQ(r.exit_code, 0) << coll << "\n" << r.output;
  EXPECT_NE(r.output.find("# Out of bounds values : 0 OK"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("# Avg bus bandwidth"), std::string::npos) << r.output;
}

INSTANTIATE_TEST_SUITE_P(Mpirun, MpirunCollectiveTest,
                         ::testing::Values("all_reduce", "reduce_scatter", "all_gather",
                                           "broadcast", "reduce", "all_to_all", "sendrecv"),
                         [](const auto& info) { return std::string(info.param); });

TEST(CollectivePerfTest, TenaxrunFourRanksHalfPrecisionAverageHasNoWrongValues) {
  auto r = run_command({TENAXRUN, "--nproc-per-node", "4", COLLECTIVE_PERF, "-b", "1K", "-e",
                        "1M", "-f", "32", "-n", "2", "-w", "1", "-c", "1", "-d", "half", "-o",
                        "avg", "--json", "/dev/null"});
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("[rank 0] # Out of bounds values : 0 OK"), std::string::npos) << r.output;
  // nccl-tests' columns, in order.
  EXPECT_TRUE(std::regex_search(r.output, std::regex("size +count +type +redop +root +time +algbw "
                                                     "+busbw +#wrong +time +algbw +busbw +#wrong")))
      << r.output;
}

// The shared-memory all-reduce reserves its segment's pages up front: on a /dev/shm too small
// for it (a container's default) the ranks fall back to sockets instead of dying of SIGBUS
// when they first touch a page. Needs a private mount namespace (root); skipped otherwise.
TEST(CollectivePerfTest, AFullDevShmFallsBackToSocketsInsteadOfCrashing) {
  auto probe = run_command({"unshare", "-m", "sh", "-c",
                            "mount -t tmpfs -o size=1m tmpfs /dev/shm"});
  if (probe.exit_code != 0) GTEST_SKIP() << "no private mount namespace here: " << probe.output;
  const std::string cmd = "mount -t tmpfs -o size=1m tmpfs /dev/shm && exec " +
                          std::string(TENAXRUN) + " --nproc-per-node 2 " + COLLECTIVE_PERF +
                          " -b 1M -e 4M -f 4 -n 2 -w 1 -c 1";
  auto r = run_command({"unshare", "-m", "sh", "-c", cmd});
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("[rank 0] # Out of bounds values : 0 OK"), std::string::npos)
      << r.output;
}

TEST(CollectivePerfTest, BadFlagIsAClearError) {
  auto r = run_command({COLLECTIVE_PERF, "-d", "complex"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.output.find("-d 'complex' is not a known dtype"), std::string::npos) << r.output;
}

}  // namespace
