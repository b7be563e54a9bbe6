// The simulated cluster itself, and tenax across its hosts: hosts that are namespaces on this
// machine, each with its own address, hostname and /dev/shm (tools/simcluster).

#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <map>
#include <nlohmann/json.hpp>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <thread>

#include "support/etcd_cluster.h"
#include "support/recovery_events.h"
#include "support/sim_cluster.h"

using tenax::testing::EtcdCluster;
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
          "  socket.create_connection(('" +
              host + "', " + std::to_string(port) + "), timeout=" + std::to_string(timeout_s) +
              ")\n"
              "  print('connected')\n"
              "except socket.timeout:\n  print('timeout')\n"
              "except ConnectionRefusedError:\n  print('refused')\n"};
}

// Serves `port` until killed.
std::vector<std::string> listen_on(int port) {
  return {"python3", "-c",
          "import socket, time\n"
          "s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
          "s.bind(('0.0.0.0', " +
              std::to_string(port) +
              ")); s.listen(8)\n"
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
  const std::vector<std::string> train = {
      LLAMA_TRAIN, "--tp",           "2", "--steps",         "6", "--global-batch",
      "12",        "--log-interval", "1", "--eval-interval", "0", "--data",
      kTrain};
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
        << "step " << s << "\n"
        << multi.output << one.output;
  }
}

TEST_F(ClusterTest, TheHierarchicalAllReduceAcrossUnevenHostsMatchesTheReferenceForEveryOp) {
  // Two hosts of two ranks and one of one: shared memory within h1 and h2, a ring between the
  // three leaders. tenax-collective-perf -c 1 checks every result against its reference.
  SimCluster c({"h1", "h2", "h3"});
  std::string loop = "for d in float int32; do for o in sum avg min max prod; do ";
  for (const auto& a : c.mpirun("h1:2,h2:2,h3:1")) loop += "'" + a + "' ";
  loop += "-x TENAX_LOG_LEVEL=debug '" + std::string(COLLECTIVE_PERF) +
          "' -b 1K -e 4M -f 16 -n 3 -w 1 -c 1 -d $d -o $o || exit 1; done; done";
  auto r = c.run("h1", {"sh", "-c", loop}, c.mpirun_env(), std::chrono::seconds(300));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("shared memory within each of 3 hosts"), std::string::npos) << r.output;
  EXPECT_EQ(r.output.find("FAILED"), std::string::npos) << r.output;
}

// Elastic training over the cluster: llama_train --elastic, dp x tp = 3 x 2, one tenaxrun per
// host against the store that h1's tenaxrun serves.
class ElasticClusterTest : public ClusterTest {
 protected:
  // Long enough that a failure at step 10 lands mid-job on a loaded machine.
  static constexpr int kSteps = 60;
  static constexpr int kStorePort = 29400;
  static constexpr int kFencedExit = 75;  // tenax::kFencedExitCode, as tenaxrun passes it on

  // Host `node`'s tenaxrun: two workers, restarted up to `restarts` times in all.
  std::vector<std::string> agent(int node, const std::string& nnodes, int steps = kSteps,
                                 std::vector<std::string> extra = {}, int restarts = 4) const {
    std::vector<std::string> cmd = {TENAXRUN,
                                    "--nproc-per-node",
                                    "2",
                                    "--nnodes",
                                    nnodes,
                                    "--node-rank",
                                    std::to_string(node),
                                    "--max-restarts",
                                    std::to_string(restarts),
                                    "--rdzv-endpoint",
                                    endpoint_};
    if (node == 0 && endpoint_.rfind("etcd", 0) != 0) cmd.push_back("--host-store");
    cmd.insert(
        cmd.end(),
        {LLAMA_TRAIN,      "--elastic", "--preset",        "tiny", "--tp",    "2",
         "--global-batch", "12",        "--micro-batch",   "2",    "--steps", std::to_string(steps),
         "--log-interval", "1",         "--eval-interval", "0",    "--data",  kTrain,
         "--ckpt-run",     "cluster",   "--last-call",     "20"});
    cmd.insert(cmd.end(), extra.begin(), extra.end());
    return cmd;
  }

  static std::map<std::string, std::string> env() {
    return {{"TENAX_STORE_TOKEN", "cluster"}, {"TENAX_TIMEOUT", "60"}};
  }

  // An etcd member on each of `hosts` (named after its host, data in the host's own /dev/shm),
  // and the agents' endpoint set to the cluster. Returns once it has a leader.
  std::vector<Process> start_etcd(const SimCluster& c, const std::vector<std::string>& hosts) {
    std::string endpoint = "etcd://";
    for (const auto& h : hosts) endpoint += (endpoint.size() > 7 ? "," : "") + h + ":2379";
    endpoint_ = endpoint + "/cluster";
    std::vector<Process> members;
    for (size_t i = 0; i < hosts.size(); ++i) members.push_back(etcd_member(c, hosts, i));
    wait_for_etcd_leader(c, hosts);
    return members;
  }

  // Member `i` of the etcd cluster on `hosts` (started again, it takes up its data directory).
  static Process etcd_member(const SimCluster& c, const std::vector<std::string>& hosts,
                             size_t i) {
    std::string initial;
    for (const auto& h : hosts) {
      initial += (initial.empty() ? "" : ",") + h + "=http://" + c.addr(h) + ":2380";
    }
    return c.start(hosts[i], EtcdCluster::member_command(hosts[i], c.addr(hosts[i]), 2379, 2380,
                                                         initial, "/dev/shm/etcd-" + hosts[i]));
  }

  static void wait_for_etcd_leader(const SimCluster& c, const std::vector<std::string>& hosts) {
    for (int i = 0; i < 150; ++i) {
      if (etcd_leader(c, hosts) >= 0) return;
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
    }
    ADD_FAILURE() << "etcd on the cluster had no leader within 30 s";
  }

  // The index in `hosts` of the etcd member that leads now (asked from h1), or -1.
  static int etcd_leader(const SimCluster& c, const std::vector<std::string>& hosts) {
    std::string eps;
    std::vector<std::string> endpoints;
    for (const auto& h : hosts) {
      eps += (eps.empty() ? "" : ",") + h + ":2379";
      endpoints.push_back(h + ":2379");
    }
    auto r = c.run("h1", {"etcdctl", "--endpoints=" + eps, "--command-timeout=2s", "endpoint",
                          "status", "-w", "json"});
    return EtcdCluster::leader_in(r.output, endpoints);
  }

  // A relaunch after every worker was fenced at step 10 or later: it resumed from the
  // snapshots left in the hosts' memory and finished.
  static void expect_resumed_from_memory(const std::string& again) {
    std::smatch m;
    ASSERT_TRUE(std::regex_search(again, m, std::regex("resuming after step ([0-9]+)"))) << again;
    EXPECT_GE(std::stoi(m[1].str()), 10) << again;
    EXPECT_EQ(again.find(step_line(1)), std::string::npos) << again;
    EXPECT_NE(again.find(step_line(kSteps)), std::string::npos) << again;
  }

  std::string endpoint_ = "h1:" + std::to_string(kStorePort);

  using Agents = std::vector<Process>;

  // One agent per host of `c` (h1's hosting the store), started h1 first; they wait for each
  // other (a long last call: the first generation closes when all six have joined).
  Agents start_agents(const SimCluster& c, const std::string& nnodes, int steps = kSteps,
                      int restarts = 4) const {
    Agents agents;
    agents.push_back(c.start("h1", agent(0, nnodes, steps, {}, restarts), env()));
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    agents.push_back(c.start("h2", agent(1, nnodes, steps, {}, restarts), env()));
    agents.push_back(c.start("h3", agent(2, nnodes, steps, {}, restarts), env()));
    return agents;
  }

  // Everything the agents printed, one after the other.
  static std::string all(const Agents& agents) {
    std::string out;
    for (const Process& p : agents) out += p.output();
    return out;
  }

  // Waits until the agents have printed `text` (false after `timeout`): the leader that logs
  // steps is whichever member the rendezvous made rank 0.
  static bool wait_for(const Agents& agents, const std::string& text,
                       std::chrono::milliseconds timeout = std::chrono::seconds(90)) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (all(agents).find(text) == std::string::npos) {
      if (std::chrono::steady_clock::now() > deadline) return false;
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    return true;
  }

  // Waits for the leader's first recovery event, whole (other members log theirs too, and may
  // come first), and returns it.
  static nlohmann::json wait_for_recovery(const Agents& agents) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
    for (;;) {
      const auto evs = events(all(agents));
      if (!evs.empty()) return evs.front();
      if (std::chrono::steady_clock::now() > deadline) {
        ADD_FAILURE() << "no recovery event from a generation's leader within 30 s:\n"
                      << all(agents);
        return nlohmann::json::object({{"resumed_step", 0}});
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
  }

  static std::string step_line(int step, int steps = kSteps) {
    char buf[32];
    std::snprintf(buf, sizeof(buf), "step %5d/%d", step, steps);
    return buf;
  }

  static std::vector<std::string> sorted(const nlohmann::json& ids) {
    auto v = ids.get<std::vector<std::string>>();
    std::sort(v.begin(), v.end());
    return v;
  }

  // One recovery event per re-formation, its leader's (`mine`: every member's own).
  static std::vector<nlohmann::json> events(const std::string& out, bool mine = false) {
    return tenax::testing::recovery_events(out, /*leaders_only=*/!mine);
  }

  // Hosts by rank of each generation's leader line, in order.
  static std::vector<std::vector<std::string>> generation_hosts(const std::string& out) {
    std::vector<std::vector<std::string>> gens;
    std::map<int, std::vector<std::string>> by_number;
    std::regex re("generation ([0-9]+): [^\\n]*hosts by rank: ([^\\n]*)");
    for (std::sregex_iterator it(out.begin(), out.end(), re), end; it != end; ++it) {
      std::istringstream in((*it)[2].str());
      std::vector<std::string> hosts;
      for (std::string h; in >> h;) hosts.push_back(h);
      by_number[std::stoi((*it)[1].str())] = hosts;
    }
    for (auto& [n, hosts] : by_number) gens.push_back(hosts);
    return gens;
  }

  static void expect_every_step(const std::string& out, int steps = kSteps) {
    for (int s = 1; s <= steps; ++s) {
      EXPECT_NE(out.find(step_line(s, steps)), std::string::npos) << "step " << s << " missing";
    }
  }

  // Every tensor-parallel pair (ranks 2i, 2i+1) on one host; every engine's replicas on
  // another host than their source, by the placement it logged.
  static void expect_topology(const std::string& out) {
    const auto gens = generation_hosts(out);
    ASSERT_FALSE(gens.empty()) << out;
    for (const auto& hosts : gens) {
      for (size_t r = 0; r + 1 < hosts.size(); r += 2) {
        EXPECT_EQ(hosts[r], hosts[r + 1]) << "a tp group spans two hosts\n" << out;
      }
    }
    std::regex re("replicas at rank \\+ ([0-9]+), each on another host; hosts by rank: ([^\\n]*)");
    int placements = 0;
    for (std::sregex_iterator it(out.begin(), out.end(), re), end; it != end; ++it, ++placements) {
      const int shift = std::stoi((*it)[1].str());
      std::istringstream in((*it)[2].str());
      std::vector<std::string> hosts;
      for (std::string h; in >> h;) hosts.push_back(h);
      for (size_t r = 0; r < hosts.size(); ++r) {
        EXPECT_NE(hosts[r], hosts[(r + shift) % hosts.size()])
            << "rank " << r << "'s replica is on its own host\n"
            << out;
      }
    }
    // One placement logged per generation over more than one host (one host has no choice).
    const auto multi_host = std::count_if(gens.begin(), gens.end(), [](const auto& hosts) {
      return std::set<std::string>(hosts.begin(), hosts.end()).size() > 1;
    });
    EXPECT_GE(placements, multi_host) << out;
    EXPECT_EQ(out.find("no placement puts every replica on another host"), std::string::npos)
        << out;
  }
};

TEST_F(ElasticClusterTest, ANodeCrashLosesNoCompletedStepAndTheLostStateComesFromOtherHosts) {
  SimCluster c({"h1", "h2", "h3"});
  Agents a = start_agents(c, "2:3");
  ASSERT_TRUE(wait_for(a, step_line(10))) << all(a);
  c.crash("h3");
  EXPECT_EQ(a[0].wait(std::chrono::seconds(120)), 0) << all(a);
  EXPECT_EQ(a[1].wait(std::chrono::seconds(30)), 0) << all(a);
  const std::string out = all(a);
  const auto evs = events(out);
  ASSERT_EQ(evs.size(), 1u) << out;
  EXPECT_EQ(evs[0]["cause"], "failure") << out;
  EXPECT_EQ(sorted(evs[0]["lost"]), (std::vector<std::string>{"w4", "w5"})) << out;
  EXPECT_EQ(evs[0]["members"].size(), 4u) << out;
  EXPECT_EQ(evs[0]["resumed_step"], evs[0]["failed_step"]) << "completed steps were lost\n" << out;
  EXPECT_NE(evs[0]["tier"], "durable") << out;
  // A crash is silence: found by the heartbeat timeout (5 s), not a connection reset.
  EXPECT_LT(evs[0]["detect_ms"].get<double>(), 9000.0) << out;
  expect_every_step(out);
  expect_topology(out);
  EXPECT_EQ(generation_hosts(out).back(), (std::vector<std::string>{"h1", "h1", "h2", "h2"}))
      << out;
}

TEST_F(ElasticClusterTest, APartitionedHostIsFencedOutWhileTheOthersGoOnAndRejoinsWhenHealed) {
  constexpr int kLong = 80;  // room for the healed host to rejoin before the end
  SimCluster c({"h1", "h2", "h3"});
  Agents a = start_agents(c, "2:3", kLong);
  ASSERT_TRUE(wait_for(a, step_line(10, kLong))) << all(a);
  c.cut("h3");
  // Both sides find out: the others re-form without h3, h3's workers fence themselves out.
  wait_for_recovery(a);
  EXPECT_TRUE(wait_for(a, "w4 is fenced out", std::chrono::seconds(30))) << all(a);
  EXPECT_TRUE(wait_for(a, "w5 is fenced out", std::chrono::seconds(30))) << all(a);
  c.heal("h3");
  for (auto& agent : a) EXPECT_EQ(agent.wait(std::chrono::seconds(180)), 0) << all(a);
  const std::string out = all(a);

  const auto evs = events(out);
  ASSERT_GE(evs.size(), 2u) << out;
  EXPECT_EQ(evs[0]["cause"], "failure") << out;
  EXPECT_EQ(sorted(evs[0]["lost"]), (std::vector<std::string>{"w4", "w5"})) << out;
  EXPECT_LT(evs[0]["detect_ms"].get<double>(), 9000.0) << out;
  EXPECT_EQ(evs[0]["resumed_step"], evs[0]["failed_step"]) << out;
  // Never two worker sets committing steps: the fenced side completed no step beyond the one
  // the others resumed from.
  std::regex fenced("(w[45]) is fenced out: [^\\n]*It completed ([0-9]+) steps");
  int fenced_members = 0;
  for (std::sregex_iterator it(out.begin(), out.end(), fenced), end; it != end; ++it) {
    ++fenced_members;
    EXPECT_LE(std::stoi((*it)[2].str()), evs[0]["resumed_step"].get<int>()) << out;
  }
  EXPECT_GE(fenced_members, 2) << out;
  // Healed, h3's workers come back as new members and take the state from peers' memory.
  const auto& back = evs.back();
  EXPECT_EQ(back["cause"], "join") << out;
  EXPECT_EQ(sorted(back["joined"]), (std::vector<std::string>{"w4", "w5"})) << out;
  EXPECT_EQ(back["members"].size(), 6u) << out;
  EXPECT_NE(back["tier"], "durable") << out;
  expect_every_step(out, kLong);
  expect_topology(out);
  EXPECT_EQ(generation_hosts(out).back(),
            (std::vector<std::string>{"h1", "h1", "h2", "h2", "h3", "h3"}))
      << out;
}

TEST_F(ElasticClusterTest, ABrandNewHostReplacesACrashedOneAndTheJobIsBackAtFullSize) {
  constexpr int kLong = 80;
  SimCluster c({"h1", "h2", "h3"});
  Agents a = start_agents(c, "2:3", kLong);
  ASSERT_TRUE(wait_for(a, step_line(10, kLong))) << all(a);
  c.crash("h3");
  wait_for_recovery(a);
  c.add("h4");  // empty memory: its workers can only take the state from peers
  a.push_back(c.start("h4", agent(2, "2:3", kLong), env()));
  for (int i : {0, 1, 3}) EXPECT_EQ(a[i].wait(std::chrono::seconds(180)), 0) << all(a);
  const std::string out = all(a);
  const auto evs = events(out);
  // The failure, then the new host's two workers joining together in one re-formation.
  ASSERT_EQ(evs.size(), 2u)
      << out << "\nh4 as it sees the others:\n"
      << c.run("h4", {"sh", "-c", "cat /etc/hosts; ip -br addr; ip neigh; getent hosts h1"}).output
      << c.run("h1", {"sh", "-c", "ip -br addr; ss -ltn"}).output;
  EXPECT_EQ(evs[0]["cause"], "failure") << out;
  EXPECT_EQ(evs[0]["resumed_step"], evs[0]["failed_step"]) << out;
  EXPECT_EQ(evs[1]["cause"], "join") << out;
  EXPECT_EQ(sorted(evs[1]["joined"]), (std::vector<std::string>{"w4", "w5"})) << out;
  EXPECT_EQ(evs[1]["members"].size(), 6u) << out;
  // The newcomers' own events: their state came over the network from peers' memory.
  const auto theirs = events(a[3].output(), /*mine=*/true);
  ASSERT_FALSE(theirs.empty()) << a[3].output();
  for (const auto& e : theirs) EXPECT_EQ(e["tier"], "peer") << a[3].output();
  expect_every_step(out, kLong);
  expect_topology(out);
  EXPECT_EQ(generation_hosts(out).back(),
            (std::vector<std::string>{"h1", "h1", "h2", "h2", "h4", "h4"}))
      << out;
}

TEST_F(ElasticClusterTest, TwoHostsLostOneAfterTheOtherLeaveOneHostTraining) {
  SimCluster c({"h1", "h2", "h3"});
  Agents a = start_agents(c, "1:3");
  ASSERT_TRUE(wait_for(a, step_line(8))) << all(a);
  c.crash("h3");
  const int resumed = wait_for_recovery(a)["resumed_step"];
  ASSERT_TRUE(wait_for(a, step_line(resumed + 3))) << all(a);
  c.crash("h2");
  EXPECT_EQ(a[0].wait(std::chrono::seconds(180)), 0) << all(a);
  const std::string out = all(a);
  const auto evs = events(out);
  ASSERT_EQ(evs.size(), 2u) << out;
  EXPECT_EQ(sorted(evs[0]["lost"]), (std::vector<std::string>{"w4", "w5"})) << out;
  EXPECT_EQ(sorted(evs[1]["lost"]), (std::vector<std::string>{"w2", "w3"})) << out;
  for (const auto& e : evs) {
    EXPECT_EQ(e["resumed_step"], e["failed_step"]) << out;
    EXPECT_NE(e["tier"], "durable") << out;
  }
  EXPECT_EQ(evs[1]["members"].size(), 2u) << out;
  expect_every_step(out);
  expect_topology(out);
}

TEST_F(ElasticClusterTest, AHostLostDuringARecoveryIsRecoveredFromToo) {
  SimCluster c({"h1", "h2", "h3"});
  Agents a = start_agents(c, "1:3");
  ASSERT_TRUE(wait_for(a, step_line(8))) << all(a);
  c.crash("h3");
  // While the others are still finding out about h3 (the heartbeat timeout is 5 s).
  std::this_thread::sleep_for(std::chrono::milliseconds(2500));
  c.crash("h2");
  EXPECT_EQ(a[0].wait(std::chrono::seconds(180)), 0) << all(a);
  const std::string out = all(a);
  const auto evs = events(out);
  ASSERT_FALSE(evs.empty()) << out;
  EXPECT_EQ(evs.back()["members"].size(), 2u) << out;
  EXPECT_EQ(evs.front()["resumed_step"], evs.front()["failed_step"]) << out;
  for (const auto& e : evs) EXPECT_NE(e["tier"], "durable") << out;
  expect_every_step(out);
}

TEST_F(ElasticClusterTest, OnEtcdTheHostOfTheLeadingMemberCrashesAndOnlyItsOwnRanksAreLost) {
  // An etcd member on every host: the store has no single point of failure. The host that
  // crashes is the one whose member leads etcd at that moment.
  SimCluster c({"h1", "h2", "h3"});
  const std::vector<std::string> hosts = {"h1", "h2", "h3"};
  std::vector<Process> etcd = start_etcd(c, hosts);
  Agents a = start_agents(c, "2:3");
  ASSERT_TRUE(wait_for(a, step_line(10))) << all(a);
  const int leader = etcd_leader(c, hosts);
  ASSERT_GE(leader, 0);
  c.crash(hosts[leader]);
  const std::vector<std::string> lost = {"w" + std::to_string(2 * leader),
                                         "w" + std::to_string(2 * leader + 1)};
  for (int i = 0; i < 3; ++i) {
    if (i != leader) EXPECT_EQ(a[i].wait(std::chrono::seconds(180)), 0) << all(a);
  }
  const std::string out = all(a);
  const auto evs = events(out);
  ASSERT_EQ(evs.size(), 1u) << out;
  EXPECT_EQ(sorted(evs[0]["lost"]), lost) << out;
  EXPECT_EQ(evs[0]["members"].size(), 4u) << out;
  EXPECT_EQ(evs[0]["resumed_step"], evs[0]["failed_step"]) << out;
  EXPECT_EQ(out.find("fenced out"), std::string::npos) << "a survivor lost the store\n" << out;
  expect_every_step(out);
  expect_topology(out);
}

TEST_F(ElasticClusterTest, OnEtcdLosingTheQuorumIsAStoreErrorNamingEtcdAndARelaunchResumes) {
  SimCluster c({"h1", "h2", "h3"});
  const std::vector<std::string> hosts = {"h1", "h2", "h3"};
  std::vector<Process> etcd = start_etcd(c, hosts);
  Agents a = start_agents(c, "2:3", kSteps, /*restarts=*/0);
  ASSERT_TRUE(wait_for(a, step_line(10))) << all(a);
  etcd[1].kill(SIGKILL);  // two members of three: no quorum; every host and rank still up
  etcd[2].kill(SIGKILL);
  for (auto& agent : a) EXPECT_EQ(agent.wait(std::chrono::seconds(90)), kFencedExit) << all(a);
  const std::string out = all(a);
  std::regex fenced(
      "(w[0-5]) is fenced out: its heartbeat could not reach the store[^\\n]*"
      "etcd at h1:2379,h2:2379,h3:2379[^\\n]*quorum[^\\n]*It completed ([0-9]+) steps");
  int count = 0;
  for (std::sregex_iterator it(out.begin(), out.end(), fenced), end; it != end; ++it) ++count;
  EXPECT_EQ(count, 6) << out;
  // The members come back (from their data): a relaunch under a new prefix (the old run's
  // records are stale) resumes from the snapshots still in every host's memory.
  etcd.push_back(etcd_member(c, hosts, 1));
  etcd.push_back(etcd_member(c, hosts, 2));
  wait_for_etcd_leader(c, hosts);
  endpoint_ += "-relaunch";
  Agents b;
  for (int node = 0; node < 3; ++node) {
    b.push_back(c.start(hosts[node], agent(node, "2:3", kSteps, {"--last-call", "2"}, 0), env()));
  }
  std::string members;
  for (auto& m : etcd) members += "etcd member:\n" + m.output();
  for (auto& agent : b) EXPECT_EQ(agent.wait(std::chrono::seconds(120)), 0) << all(b) << members;
  expect_resumed_from_memory(all(b));
}

TEST_F(ElasticClusterTest, TheStoresHostCrashingFencesEveryWorkerWithItsStateLeftForARelaunch) {
  SimCluster c({"h1", "h2", "h3"});
  Agents a = start_agents(c, "2:3", kSteps, /*restarts=*/0);
  ASSERT_TRUE(wait_for(a, step_line(10))) << all(a);
  c.crash("h1");  // the store with it: a single point of failure today
  EXPECT_EQ(a[1].wait(std::chrono::seconds(60)), kFencedExit) << all(a);
  EXPECT_EQ(a[2].wait(std::chrono::seconds(60)), kFencedExit) << all(a);
  const std::string out = all(a);
  std::regex fenced(
      "(w[2-5]) is fenced out: its heartbeat could not reach the store[^\\n]*"
      "It completed ([0-9]+) steps");
  int last = -1, count = 0;
  for (std::sregex_iterator it(out.begin(), out.end(), fenced), end; it != end; ++it, ++count) {
    last = std::max(last, std::stoi((*it)[2].str()));
  }
  EXPECT_EQ(count, 4) << out;
  ASSERT_GE(last, 10) << out;
  // The snapshots are still in h2's and h3's memory: a relaunch on them with the store on h2,
  // same node ranks (so the same member ids, whose snapshots these are), resumes from there.
  auto relaunch = [&](int node) {
    auto cmd = agent(node, "2:3", kSteps, {"--last-call", "2"}, 0);
    for (auto& arg : cmd) {
      if (arg == "h1:" + std::to_string(kStorePort)) arg = "h2:" + std::to_string(kStorePort);
    }
    if (node == 1) cmd.insert(cmd.begin() + 1, "--host-store");
    return cmd;
  };
  Agents b;
  b.push_back(c.start("h2", relaunch(1), env()));
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  b.push_back(c.start("h3", relaunch(2), env()));
  for (auto& agent : b) EXPECT_EQ(agent.wait(std::chrono::seconds(120)), 0) << all(b);
  expect_resumed_from_memory(all(b));
}

}  // namespace
