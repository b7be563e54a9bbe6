#include "support/process.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sstream>
#include <thread>

#include "tenax/store/store_server.h"

namespace tenax::testing {

Process::Process(const std::vector<std::string>& argv,
                 const std::map<std::string, std::string>& env) {
  char tmpl[] = "/tmp/tenax-test-XXXXXX";
  int fd = mkstemp(tmpl);
  log_path_ = tmpl;
  pid_ = fork();
  if (pid_ == 0) {
    dup2(fd, 1);
    dup2(fd, 2);
    for (const auto& [k, v] : env) setenv(k.c_str(), v.c_str(), 1);
    std::vector<char*> args;
    for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    execvp(args[0], args.data());
    _exit(127);
  }
  close(fd);
}

Process::Process(Process&& o) noexcept
    : pid_(o.pid_), log_path_(std::move(o.log_path_)), exited_(o.exited_), code_(o.code_) {
  o.pid_ = -1;
  o.log_path_.clear();
}

Process::~Process() {
  if (pid_ > 0 && !exited_) {
    ::kill(pid_, SIGKILL);
    waitpid(pid_, nullptr, 0);
  }
  if (!log_path_.empty()) unlink(log_path_.c_str());
}

int Process::wait(std::chrono::milliseconds timeout) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  while (!exited_) {
    int status = 0;
    pid_t r = waitpid(pid_, &status, WNOHANG);
    if (r == pid_) {
      exited_ = true;
      code_ = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
      break;
    }
    if (std::chrono::steady_clock::now() > deadline) return -1;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return code_;
}

void Process::kill(int sig) {
  if (pid_ > 0 && !exited_) ::kill(pid_, sig);
}

std::string Process::output() const {
  std::ifstream in(log_path_);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::vector<RankResult> run_ranks(int n, const std::vector<std::string>& argv,
                                  std::map<std::string, std::string> env,
                                  std::chrono::milliseconds timeout, int stuck_rank) {
  const std::string token = "test-token-" + std::to_string(getpid());
  std::unique_ptr<StoreServer> store;
  if (env.count("MASTER_PORT") == 0 && env.count("TENAX_STORE_ADDR") == 0) {
    store = std::make_unique<StoreServer>("127.0.0.1", 0, token);
    env["TENAX_STORE_ADDR"] = "127.0.0.1:" + std::to_string(store->port());
  }
  if (env.count("TENAX_STORE_TOKEN") == 0) env["TENAX_STORE_TOKEN"] = token;
  env["WORLD_SIZE"] = std::to_string(n);
  env["LOCAL_WORLD_SIZE"] = std::to_string(n);
  // As tenaxrun and torchrun do: n ranks share the cores instead of each running an OpenMP pool
  // as wide as the machine (LibTorch's libgomp threads spin while they wait, and n such pools on
  // two cores made a 20-step fully sharded run at dp 2 take 27 s instead of 5).
  if (env.count("OMP_NUM_THREADS") == 0 && std::getenv("OMP_NUM_THREADS") == nullptr) {
    const unsigned cores = std::max(1u, std::thread::hardware_concurrency());
    env["OMP_NUM_THREADS"] = std::to_string(std::max(1u, cores / static_cast<unsigned>(n)));
  }
  std::vector<Process> procs;
  for (int r = 0; r < n; ++r) {
    env["RANK"] = env["LOCAL_RANK"] = std::to_string(r);
    procs.emplace_back(argv, env);
  }
  auto deadline = std::chrono::steady_clock::now() + timeout;
  std::vector<RankResult> results;
  for (int r = 0; r < n; ++r) {
    if (r == stuck_rank) continue;
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    if (procs[r].wait(std::max(left, std::chrono::milliseconds(0))) < 0) procs[r].kill(SIGKILL);
  }
  if (stuck_rank >= 0) {
    procs[stuck_rank].kill(SIGKILL);
    procs[stuck_rank].wait(std::chrono::seconds(10));
  }
  for (auto& p : procs) {
    results.push_back({p.exited() ? p.exit_code() : -1, p.output()});
  }
  return results;
}

RankResult run_command(const std::vector<std::string>& argv,
                       const std::map<std::string, std::string>& env,
                       std::chrono::milliseconds timeout) {
  Process p(argv, env);
  int code = p.wait(timeout);
  if (code < 0) p.kill(SIGKILL);
  return {code, p.output()};
}

std::string dump(const std::vector<RankResult>& results) {
  std::string s;
  for (size_t r = 0; r < results.size(); ++r) {
    s += "--- rank " + std::to_string(r) + " (exit " + std::to_string(results[r].exit_code) +
         ") ---\n" + results[r].output + "\n";
  }
  return s;
}

}  // namespace tenax::testing

namespace tenax::testing {

namespace {

bool port_free(int port) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(static_cast<uint16_t>(port));
  const bool ok = bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
  close(fd);
  return ok;
}

}  // namespace

int free_port_block(int n) {
  int ephemeral_low = 32768;
  std::ifstream("/proc/sys/net/ipv4/ip_local_port_range") >> ephemeral_low;
  // 10000-19999: under the ephemeral range and the Slurm launch's store ports (20000 + job id).
  const int low = 10000, high = std::max(low + 1000, std::min(20000, ephemeral_low)) - n;
  // From a start of this process's own, so tests running side by side look in different places.
  int port = low + static_cast<int>((static_cast<unsigned>(getpid()) * 7919u) % (high - low));
  for (int tries = 0; tries < high - low; ++tries, port = port + 1 < high ? port + 1 : low) {
    bool all = true;
    for (int k = 0; k < n && all; ++k) all = port_free(port + k);
    if (all) return port;
  }
  return -1;
}

int free_port() {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
  socklen_t len = sizeof(addr);
  getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  close(fd);
  return ntohs(addr.sin_port);
}

}  // namespace tenax::testing
