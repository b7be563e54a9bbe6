// The metrics endpoint, the merge of several processes' expositions, the flight recorder and
// tenax-flight, with real processes and real sockets.

#include "tenax/observe/observe.h"

#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <thread>

#include "support/process.h"
#include "tenax/core/error.h"
#include "tenax/core/metrics.h"
#include "tenax/observe/exposition.h"

namespace {

using tenax::testing::run_command;

// A socket that holds a loopback port (listening) until destroyed.
class HeldPort {
 public:
  HeldPort() {
    fd_ = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    bind(fd_, reinterpret_cast<sockaddr*>(&a), sizeof(a));
    listen(fd_, 1);
    socklen_t n = sizeof(a);
    getsockname(fd_, reinterpret_cast<sockaddr*>(&a), &n);
    port_ = ntohs(a.sin_port);
  }
  ~HeldPort() { close(fd_); }
  int port() const { return port_; }

 private:
  int fd_ = -1, port_ = 0;
};

std::string temp_dir(const std::string& name) {
  const std::string d = ::testing::TempDir() + "/" + name + "." + std::to_string(getpid());
  std::filesystem::remove_all(d);
  std::filesystem::create_directories(d);
  return d;
}

TEST(MetricsServerTest, ServesTheRegistryOnGetMetrics) {
  tenax::metrics::registry().counter("t_served_total", "Served").inc(7);
  tenax::observe::MetricsServer server("127.0.0.1", 0);
  ASSERT_GT(server.port(), 0);
  auto body = tenax::observe::fetch_metrics("127.0.0.1", server.port(), 2000);
  ASSERT_TRUE(body.has_value());
  EXPECT_NE(body->find("t_served_total 7\n"), std::string::npos) << *body;
}

TEST(MetricsServerTest, APortInUseIsAConfigErrorThatNamesThePort) {
  HeldPort held;
  try {
    tenax::observe::MetricsServer server("127.0.0.1", held.port(), {}, "TENAX_METRICS_PORT test");
    FAIL() << "bound a port in use";
  } catch (const tenax::ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("127.0.0.1:" + std::to_string(held.port())),
              std::string::npos)
        << e.what();
    EXPECT_NE(std::string(e.what()).find("in use"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("TENAX_METRICS_PORT test"), std::string::npos);
  }
}

TEST(MetricsServerTest, AnEndpointThatDoesNotAnswerYieldsNothingWithinTheTimeout) {
  HeldPort held;  // listens, never answers
  const auto start = std::chrono::steady_clock::now();
  EXPECT_FALSE(tenax::observe::fetch_metrics("127.0.0.1", held.port(), 300).has_value());
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(3));
}

TEST(ExpositionTest, MergeKeepsEachFamilyOnceWithEveryProcesssSamples) {
  const std::string a =
      "# HELP x_total X\n# TYPE x_total counter\nx_total{rank=\"0\"} 1\n"
      "# HELP y Y\n# TYPE y gauge\ny{rank=\"0\"} 2\n";
  const std::string b =
      "# HELP y Y\n# TYPE y gauge\ny{rank=\"1\"} 3\n"
      "# HELP z Z\n# TYPE z gauge\nz{rank=\"1\"} 4\n";
  EXPECT_EQ(tenax::observe::merge_expositions({a, b}),
            "# HELP x_total X\n# TYPE x_total counter\nx_total{rank=\"0\"} 1\n"
            "# HELP y Y\n# TYPE y gauge\ny{rank=\"0\"} 2\ny{rank=\"1\"} 3\n"
            "# HELP z Z\n# TYPE z gauge\nz{rank=\"1\"} 4\n");
}

// A rank whose metrics port is taken stops before training, saying which port; so does
// tenaxrun for its host endpoint, before starting any worker.
TEST(ObservabilityTest, ATakenMetricsPortStopsTheRankBeforeItTrains) {
  HeldPort held;
  auto r =
      run_command({LLAMA_TRAIN, "--preset", "tiny", "--steps", "3", "--global-batch", "4", "--data",
                   std::string(LLAMA_CORPUS) + "/train.bin"},
                  {{"TENAX_METRICS_PORT", std::to_string(held.port())}}, std::chrono::seconds(60));
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("127.0.0.1:" + std::to_string(held.port())), std::string::npos)
      << r.output;
  EXPECT_NE(r.output.find("TENAX_METRICS_PORT " + std::to_string(held.port()) + " + local rank 0"),
            std::string::npos)
      << r.output;
  EXPECT_EQ(r.output.find("step "), std::string::npos) << r.output;

  auto t = run_command({TENAXRUN, "--nproc-per-node", "2", "--metrics-port",
                        std::to_string(held.port()), LLAMA_TRAIN, "--preset", "tiny"},
                       {}, std::chrono::seconds(60));
  EXPECT_EQ(t.exit_code, 1) << t.output;
  EXPECT_NE(t.output.find("port " + std::to_string(held.port()) + " is in use"), std::string::npos)
      << t.output;
  EXPECT_EQ(t.output.find("[rank"), std::string::npos) << t.output;  // no worker started
}

// Rank 2 stops (SIGSTOP) in step 5: the others time out in the gradient all-reduce and dump
// their flight records; tenax-flight names rank 2 as the one behind.
TEST(FlightRecorderTest, AHungRanksPeersDumpTheirRecordsAndTenaxFlightNamesIt) {
  const std::string dir = temp_dir("flight");
  auto r = run_command(
      {TENAXRUN, "--nproc-per-node", "4", "--timeout", "4", LLAMA_TRAIN, "--preset", "tiny",
       "--global-batch", "16", "--steps", "30", "--data", std::string(LLAMA_CORPUS) + "/train.bin"},
      {{"TENAX_FLIGHT_DIR", dir}, {"TENAX_FAULT", "hang@5:rank=2"}}, std::chrono::seconds(120));
  EXPECT_NE(r.exit_code, 0) << r.output;
  for (int rank : {0, 1, 3}) {
    EXPECT_TRUE(std::filesystem::exists(dir + "/flight-rank" + std::to_string(rank) + ".json"))
        << rank << "\n"
        << r.output;
  }
  EXPECT_FALSE(std::filesystem::exists(dir + "/flight-rank2.json"));
  auto f = run_command({TENAX_FLIGHT, dir});
  ASSERT_EQ(f.exit_code, 0) << f.output;
  EXPECT_NE(f.output.find("rank 2: no record"), std::string::npos) << f.output;
  EXPECT_NE(f.output.find("verdict: communicator 'world"), std::string::npos) << f.output;
  EXPECT_NE(f.output.find("rank 2 is behind on all_reduce #"), std::string::npos) << f.output;
  EXPECT_NE(f.output.find("ranks 0, 1, 3 wait in it"), std::string::npos) << f.output;
  std::filesystem::remove_all(dir);
}

// SIGUSR1 makes a running rank dump its records, with every operation done so far.
TEST(FlightRecorderTest, SigusrOneDumpsARunningRanksRecords) {
  const std::string dir = temp_dir("flight_usr1");
  tenax::testing::Process p(
      {TENAXRUN, "--nproc-per-node", "2", LLAMA_TRAIN, "--preset", "tiny", "--global-batch", "8",
       "--steps", "100000", "--data", std::string(LLAMA_CORPUS) + "/train.bin"},
      {{"TENAX_FLIGHT_DIR", dir}});
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (p.output().find("step     1/") == std::string::npos &&
         std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  ASSERT_NE(p.output().find("step     1/"), std::string::npos) << p.output();
  auto pids = run_command({"pgrep", "-f", "-P", std::to_string(p.pid()), "llama_train"});
  ASSERT_EQ(pids.exit_code, 0) << pids.output;
  const pid_t rank = std::stoi(pids.output);
  kill(rank, SIGUSR1);
  std::string found;
  while (found.empty() && std::chrono::steady_clock::now() < deadline) {
    for (int r : {0, 1}) {
      const std::string path = dir + "/flight-rank" + std::to_string(r) + ".json";
      if (std::filesystem::exists(path)) found = path;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  p.kill(SIGTERM);
  p.wait(std::chrono::seconds(30));
  ASSERT_FALSE(found.empty()) << p.output();
  std::ifstream in(found);
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_NE(text.find("\"reason\":\"SIGUSR1\""), std::string::npos) << text.substr(0, 400);
  EXPECT_NE(text.find("\"op\":\"all_reduce\""), std::string::npos);
  EXPECT_NE(text.find("\"state\":\"done\""), std::string::npos);
  auto f = run_command({TENAX_FLIGHT, found});
  EXPECT_EQ(f.exit_code, 0) << f.output;
  std::filesystem::remove_all(dir);
}

}  // namespace
