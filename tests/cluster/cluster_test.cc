// The simulated cluster itself, and tenax across its hosts: hosts that are namespaces on this
// machine, each with its own address, hostname and /dev/shm (tools/simcluster).

#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <regex>
#include <csignal>
#include <string>
#include <thread>

#include "support/sim_cluster.h"

using tenax::testing::Process;
using tenax::testing::RankResult;
using tenax::testing::run_command;
using tenax::testing::SimCluster;

namespace {

const std::string kTrain = std::string(LLAMA_CORPUS) + "/train.bin";

class ClusterTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const std::string why = SimCluster::unavailable();
    if (!why.empty()) GTEST_SKIP() << why;
  }
};

// Every namespace named after cluster `id`.
std::vector<std::string> namespaces_of(const std::string& id) {
  auto r = run_command({"ip", "netns", "list"}, {}, std::chrono::seconds(10));
  std::vector<std::string> left;
  std::regex re("(^|\\n)(tnx" + id + "-[a-z0-9]+)");
  for (std::sregex_iterator it(r.output.begin(), r.output.end(), re), end; it != end; ++it) {
    left.push_back((*it)[2]);
  }
  return left;
}

// A one-line Python TCP client: prints "connected", "timeout" or "refused".
std::vector<std::string> connect_to(const std::string& host, int port, double timeout_s) {
  return {"python3", "-c",
          "import socket\n"
          "try:\n"
          "  socket.create_connection(('" + host + "', " + std::to_string(port) + "), timeout=" +
              std::to_string(timeout_s) + ")\n"
          "  print('connected')\n"
          "except socket.timeout:\n  print('timeout')\n"
          "except ConnectionRefusedError:\n  print('refused')\n"};
}

// Serves `port` until killed.
std::vector<std::string> listen_on(int port) {
  return {"python3", "-c",
          "import socket, time\n"
          "s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
          "s.bind(('0.0.0.0', " + std::to_string(port) + ")); s.listen(8)\n"
          "print('listening', flush=True)\n"
          "while True:\n  c, _ = s.accept()\n"};
}

void wait_for_output(const Process& p, const std::string& text) {
  for (int i = 0; i < 200 && p.output().find(text) == std::string::npos; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(25));
  }
  ASSERT_NE(p.output().find(text), std::string::npos) << p.output();
}

TEST_F(ClusterTest, HostsHaveTheirOwnNameAddressAndSharedMemoryAndReachEachOtherByName) {
  std::string id;
  {
    SimCluster c({"h1", "h2", "h3"});
    id = c.id();
    EXPECT_EQ(namespaces_of(id).size(), 4u);  // three hosts and the switch
    auto mark = c.run("h1", {"sh", "-c", "echo state > /dev/shm/tenax-cluster-mark"});
    ASSERT_EQ(mark.exit_code, 0) << mark.output;
    for (const std::string h : {"h1", "h2", "h3"}) {
      auto r = c.run(h, {"sh", "-c", "hostname; ls -A /dev/shm; getent hosts " + h});
      ASSERT_EQ(r.exit_code, 0) << r.output;
      EXPECT_EQ(r.output.rfind(h + "\n", 0), 0u) << r.output;
      EXPECT_EQ(r.output.find("tenax-cluster-mark") != std::string::npos, h == "h1") << r.output;
      EXPECT_NE(r.output.find(c.addr(h)), std::string::npos) << r.output;
      EXPECT_EQ(c.addr(h).rfind("198.18.", 0), 0u);
    }
    EXPECT_NE(::access("/dev/shm/tenax-cluster-mark", F_OK), 0) << "the host's memory leaked";
    Process server = c.start("h1", listen_on(7070));
    wait_for_output(server, "listening");
    EXPECT_EQ(c.run("h3", connect_to("h1", 7070, 2)).output, "connected\n");
    EXPECT_EQ(c.run("h3", connect_to("h1", 7071, 2)).output, "refused\n");
  }
  EXPECT_TRUE(namespaces_of(id).empty());
}

TEST_F(ClusterTest, ACutLinkDropsPacketsWithoutAResetUntilHealed) {
  SimCluster c({"h1", "h2"});
  Process server = c.start("h1", listen_on(7070));
  wait_for_output(server, "listening");
  c.cut("h1");
  const auto start = std::chrono::steady_clock::now();
  EXPECT_EQ(c.run("h2", connect_to("h1", 7071, 1)).output, "timeout\n");
  EXPECT_GE(std::chrono::steady_clock::now() - start, std::chrono::milliseconds(900));
  c.heal("h1");
  EXPECT_EQ(c.run("h2", connect_to("h1", 7070, 5)).output, "connected\n");
}

TEST_F(ClusterTest, ACrashedHostLosesEveryProcessAndItsMemoryAndANewHostStartsEmpty) {
  std::string id;
  {
    SimCluster c({"h1", "h2"});
    id = c.id();
    Process victim = c.start("h2", {"sh", "-c", "echo x > /dev/shm/state; sleep 300 & wait"});
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    c.crash("h2");
    EXPECT_EQ(victim.wait(std::chrono::seconds(5)), 128 + SIGKILL);
    EXPECT_EQ(namespaces_of(id).size(), 2u);  // h1 and the switch
    EXPECT_EQ(c.run("h1", connect_to("h2", 7070, 1)).output, "timeout\n");
    c.add("h3");
    auto fresh = c.run("h3", {"sh", "-c", "hostname; ls -A /dev/shm | wc -l"});
    EXPECT_EQ(fresh.output, "h3\n0\n");
    EXPECT_EQ(c.run("h3", {"getent", "hosts", "h1"}).exit_code, 0);
  }
  EXPECT_TRUE(namespaces_of(id).empty());
}

// The loss logged at `step`, or NaN.
double loss_at(const std::string& out, int step, int steps) {
  std::smatch m;
  std::regex re("step +" + std::to_string(step) + "/" + std::to_string(steps) +
                " \\| loss ([0-9.]+)");
  return std::regex_search(out, m, re) ? std::stod(m[1]) : NAN;
}

TEST_F(ClusterTest, MpirunAcrossThreeHostsTrainsAsOnOneHost) {
  const std::vector<std::string> train = {LLAMA_TRAIN, "--tp", "2", "--steps", "6",
                                          "--global-batch", "12", "--log-interval", "1",
                                          "--eval-interval", "0", "--data", kTrain};
  SimCluster c({"h1", "h2", "h3"});
  std::vector<std::string> across = c.mpirun("h1:2,h2:2,h3:2");
  across.insert(across.end(), train.begin(), train.end());
  auto multi = c.run("h1", across, c.mpirun_env(), std::chrono::seconds(120));
  ASSERT_EQ(multi.exit_code, 0) << multi.output;
  EXPECT_NE(multi.output.find("6 ranks (mpirun): dp=3 tp=2"), std::string::npos) << multi.output;

  std::vector<std::string> local = {"mpirun", "--oversubscribe", "--bind-to", "none", "-np", "6"};
  local.insert(local.end(), train.begin(), train.end());
  auto one = run_command(local, c.mpirun_env(), std::chrono::seconds(120));
  ASSERT_EQ(one.exit_code, 0) << one.output;
  for (int s = 1; s <= 6; ++s) {
    EXPECT_NEAR(loss_at(multi.output, s, 6), loss_at(one.output, s, 6), 1e-3)
        << "step " << s << "\n" << multi.output << one.output;
  }
}

}  // namespace
