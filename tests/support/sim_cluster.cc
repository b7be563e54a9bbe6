#include "support/sim_cluster.h"

#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <sstream>
#include <stdexcept>

namespace tenax::testing {
namespace {

const std::string kTool = SIMCLUSTER;

std::string first_line(const std::string& path) {
  std::ifstream in(path);
  std::string line;
  std::getline(in, line);
  return line;
}

}  // namespace

std::string SimCluster::unavailable() {
  if (::geteuid() != 0) return "the simulated cluster needs root (network namespaces)";
  auto r = run_command({"ip", "netns", "list"}, {}, std::chrono::seconds(10));
  if (r.exit_code != 0) return "the simulated cluster needs `ip netns`: " + r.output;
  return "";
}

SimCluster::SimCluster(const std::vector<std::string>& hosts) {
  char tmpl[] = "/tmp/tenax-cluster-XXXXXX";
  if (::mkdtemp(tmpl) == nullptr) throw std::runtime_error("mkdtemp failed");
  dir_ = std::string(tmpl) + "/c";
  std::vector<std::string> args = {"up", dir_};
  args.insert(args.end(), hosts.begin(), hosts.end());
  try {
    tool(args);
  } catch (...) {
    run_command({kTool, "down", dir_}, {}, std::chrono::seconds(60));
    throw;
  }
  id_ = first_line(dir_ + "/id");
}

SimCluster::~SimCluster() {
  run_command({kTool, "down", dir_}, {}, std::chrono::seconds(60));
  ::rmdir(dir_.substr(0, dir_.size() - 2).c_str());
}

void SimCluster::tool(const std::vector<std::string>& args) const {
  std::vector<std::string> argv = {kTool};
  argv.insert(argv.end(), args.begin(), args.end());
  auto r = run_command(argv, {}, std::chrono::seconds(60));
  if (r.exit_code != 0) {
    std::ostringstream msg;
    msg << "simcluster";
    for (const auto& a : args) msg << " " << a;
    msg << " failed (" << r.exit_code << "): " << r.output;
    throw std::runtime_error(msg.str());
  }
}

std::vector<std::string> SimCluster::on(const std::string& host,
                                        const std::vector<std::string>& argv) const {
  std::vector<std::string> full = {kTool, "run", dir_, host};
  full.insert(full.end(), argv.begin(), argv.end());
  return full;
}

Process SimCluster::start(const std::string& host, const std::vector<std::string>& argv,
                          const std::map<std::string, std::string>& env) const {
  return Process(on(host, argv), env);
}

RankResult SimCluster::run(const std::string& host, const std::vector<std::string>& argv,
                           const std::map<std::string, std::string>& env,
                           std::chrono::milliseconds timeout) const {
  return run_command(on(host, argv), env, timeout);
}

std::vector<std::string> SimCluster::mpirun(const std::string& host_list) const {
  return {"mpirun", "--mca", "plm_rsh_agent", kTool + " rsh", "--host", host_list};
}

std::map<std::string, std::string> SimCluster::mpirun_env() const {
  return {{"SIMCLUSTER_DIR", dir_},
          {"OMPI_ALLOW_RUN_AS_ROOT", "1"},
          {"OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1"}};
}

void SimCluster::crash(const std::string& host) { tool({"crash", dir_, host}); }
void SimCluster::cut(const std::string& host) { tool({"cut", dir_, host}); }
void SimCluster::heal(const std::string& host) { tool({"heal", dir_, host}); }
void SimCluster::add(const std::string& host) { tool({"add", dir_, host}); }
std::string SimCluster::addr(const std::string& host) const {
  return first_line(dir_ + "/hosts.d/" + host + ".addr");
}

std::vector<std::string> SimCluster::namespaces() const {
  auto r = run_command({"ip", "netns", "list"}, {}, std::chrono::seconds(10));
  std::vector<std::string> mine;
  std::istringstream in(r.output);
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("tnx" + id_ + "-", 0) == 0) mine.push_back(line.substr(0, line.find(' ')));
  }
  return mine;
}

}  // namespace tenax::testing
