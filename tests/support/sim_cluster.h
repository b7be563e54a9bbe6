#pragma once

// The simulated cluster (tools/simcluster) for tests: hosts that are Linux namespaces on this
// machine, each with its own address, hostname and /dev/shm, on a private switch. A cluster
// removes everything it made when it is destroyed, whether the test passed or not.

#include <chrono>
#include <map>
#include <string>
#include <vector>

#include "support/process.h"

namespace tenax::testing {

class SimCluster {
 public:
  // Why clusters cannot be made here ("" when they can): they need root and `ip netns`.
  static std::string unavailable();

  // Starts the hosts (names as "h1", "h2", ...).
  explicit SimCluster(const std::vector<std::string>& hosts);
  ~SimCluster();
  SimCluster(const SimCluster&) = delete;

  // argv run on `host` (its namespaces, this process's working directory and environment).
  std::vector<std::string> on(const std::string& host, const std::vector<std::string>& argv) const;
  Process start(const std::string& host, const std::vector<std::string>& argv,
                const std::map<std::string, std::string>& env = {}) const;
  RankResult run(const std::string& host, const std::vector<std::string>& argv,
                 const std::map<std::string, std::string>& env = {},
                 std::chrono::milliseconds timeout = std::chrono::seconds(60)) const;

  // mpirun with its remote daemons started on the cluster's hosts (the rsh agent enters a
  // host's namespaces instead of ssh), to be run on one of the hosts; and the environment it
  // needs.
  std::vector<std::string> mpirun(const std::string& host_list) const;
  std::map<std::string, std::string> mpirun_env() const;

  void crash(const std::string& host);  // every process killed at once, its memory gone
  void cut(const std::string& host);    // its link goes silent
  void heal(const std::string& host);   // and comes back
  void add(const std::string& host);    // a brand-new host
  std::string addr(const std::string& host) const;

  // The namespaces of this cluster still present (after the destructor: none).
  std::vector<std::string> namespaces() const;
  const std::string& id() const { return id_; }
  // The cluster's state directory (what tools/simcluster and tools/simslurm take).
  const std::string& dir() const { return dir_; }

 private:
  void tool(const std::vector<std::string>& args) const;

  std::string dir_;
  std::string id_;
};

}  // namespace tenax::testing
