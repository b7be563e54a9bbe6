#include "tenax/store/launch.h"

#include <dlfcn.h>
#include <fcntl.h>
#include <poll.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "store/net.h"
#include "tenax/core/config.h"
#include "tenax/core/error.h"
#include "tenax/store/etcd_store.h"

extern char** environ;

namespace tenax {
namespace {

// "w<rank>", built with a stream: GCC 12 reports a false -Wrestrict for "w" + std::to_string.
std::string member_id(int rank) {
  std::ostringstream id;
  id << 'w' << rank;
  return id.str();
}

int env_rank_var(const char* name) {
  long long v = env_int(name, -1);
  if (v < 0 && env_string(name)) {
    throw ConfigError(std::string(name) + "=" + *env_string(name) + " must be >= 0");
  }
  return static_cast<int>(v);
}

// "node[03-05,7],other" -> "node03"; "a,b" -> "a".
std::string first_slurm_host(const std::string& list) {
  std::string first;
  int depth = 0;
  for (char ch : list) {
    if (ch == ',' && depth == 0) break;
    if (ch == '[') ++depth;
    if (ch == ']') --depth;
    first += ch;
  }
  size_t lb = first.find('[');
  if (lb == std::string::npos) return first;
  std::string prefix = first.substr(0, lb);
  std::string range = first.substr(lb + 1);
  size_t end = range.find_first_of("-,]");
  return prefix + range.substr(0, end);
}

void check_identity(LaunchInfo& info, const char* rank_var, const char* size_var) {
  if (info.size < 1) {
    throw ConfigError(std::string(size_var) + "=" + std::to_string(info.size) +
                      ": world size must be at least 1");
  }
  if (info.rank < 0 || info.rank >= info.size) {
    throw ConfigError(std::string(rank_var) + "=" + std::to_string(info.rank) +
                      " is out of range for " + size_var + "=" + std::to_string(info.size));
  }
  if (info.local_size < 1) info.local_size = 1;
}

void parse_master(LaunchInfo& info) {
  if (auto addr = env_string("TENAX_STORE_ADDR")) {
    info.host_store = false;
    if (EtcdOptions::is_etcd_address(*addr)) {
      EtcdOptions::parse(*addr);  // a malformed address fails here, naming it
      info.store_address = *addr;
      return;
    }
    size_t colon = addr->rfind(':');
    if (colon == std::string::npos) {
      throw ConfigError("TENAX_STORE_ADDR='" + *addr + "' must be host:port or etcd://…");
    }
    info.store_host = addr->substr(0, colon);
    info.store_port = std::atoi(addr->c_str() + colon + 1);
    return;
  }
  info.store_host = env_string("MASTER_ADDR").value_or("");
  info.store_port = static_cast<int>(env_int("MASTER_PORT", 0));
  if (info.store_host.empty() || info.store_port <= 0) {
    throw ConfigError(info.launcher + " launch: set MASTER_ADDR and MASTER_PORT (or "
                      "TENAX_STORE_ADDR=host:port) so the ranks can find the store");
  }
  info.host_store = info.rank == 0;
}

bool executable(const std::string& path) {
  struct stat st {};
  return !path.empty() && ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode) &&
         ::access(path.c_str(), X_OK) == 0;
}

std::string directory_of(const std::string& path) {
  const size_t slash = path.rfind('/');
  return slash == std::string::npos ? "." : path.substr(0, slash);
}

// The places find_store_program looks, in order.
std::vector<std::string> store_program_candidates(const std::string& program) {
  std::vector<std::string> at;
  if (!program.empty()) return {program};
  if (auto bin = env_string("TENAX_STORE_BIN")) return {*bin};
  Dl_info self{};
  if (::dladdr(reinterpret_cast<void*>(&find_store_program), &self) != 0 && self.dli_fname) {
    const std::string dir = directory_of(self.dli_fname);
    at.push_back(dir + "/tenax-store");
    at.push_back(dir + "/../bin/tenax-store");
  }
#ifdef TENAX_STORE_INSTALLED_PATH
  at.push_back(TENAX_STORE_INSTALLED_PATH);
#endif
#ifdef TENAX_STORE_BUILD_PATH
  at.push_back(TENAX_STORE_BUILD_PATH);
#endif
  if (auto path = env_string("PATH")) {
    std::stringstream dirs(*path);
    for (std::string dir; std::getline(dirs, dir, ':');) {
      if (!dir.empty()) at.push_back(dir + "/tenax-store");
    }
  }
  return at;
}

}  // namespace

LaunchInfo detect_launch() {
  LaunchInfo info;
  info.token = env_string("TENAX_STORE_TOKEN").value_or("");
  if (env_string("RANK") || env_string("WORLD_SIZE")) {
    info.launcher = env_string("TENAX_LAUNCHER").value_or("torchrun");
    info.rank = env_rank_var("RANK");
    info.size = static_cast<int>(env_int("WORLD_SIZE", -1));
    info.local_rank = std::max(0, env_rank_var("LOCAL_RANK"));
    info.local_size = static_cast<int>(env_int("LOCAL_WORLD_SIZE", info.size));
    check_identity(info, "RANK", "WORLD_SIZE");
    parse_master(info);
  } else if (env_string("OMPI_COMM_WORLD_RANK")) {
    info.launcher = "mpirun";
    info.rank = env_rank_var("OMPI_COMM_WORLD_RANK");
    info.size = static_cast<int>(env_int("OMPI_COMM_WORLD_SIZE", -1));
    info.local_rank = std::max(0, env_rank_var("OMPI_COMM_WORLD_LOCAL_RANK"));
    info.local_size = static_cast<int>(env_int("OMPI_COMM_WORLD_LOCAL_SIZE", 1));
    check_identity(info, "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE");
    if (env_string("TENAX_STORE_ADDR")) {
      parse_master(info);
    } else {
      info.store_port = static_cast<int>(env_int("TENAX_STORE_PORT", 0));  // rank 0's store
    }
  } else if (env_string("SLURM_PROCID")) {
    info.launcher = "slurm";
    info.rank = env_rank_var("SLURM_PROCID");
    info.size = static_cast<int>(env_int("SLURM_NTASKS", -1));
    info.local_rank = std::max(0, env_rank_var("SLURM_LOCALID"));
    info.local_size = static_cast<int>(env_int("SLURM_NTASKS_PER_NODE", info.size));
    check_identity(info, "SLURM_PROCID", "SLURM_NTASKS");
    if (!env_string("MASTER_ADDR") && !env_string("TENAX_STORE_ADDR")) {
      auto nodes = env_string("SLURM_STEP_NODELIST");
      if (!nodes) nodes = env_string("SLURM_JOB_NODELIST");
      if (!nodes) throw ConfigError("slurm launch: set MASTER_ADDR or SLURM_STEP_NODELIST");
      info.store_host = first_slurm_host(*nodes);
      info.store_port = static_cast<int>(20000 + env_int("SLURM_JOB_ID", 0) % 20000);
      info.host_store = info.rank == 0;
    } else {
      parse_master(info);
    }
  } else {
    info.launcher = "single";
  }
  info.member = env_string("TENAX_MEMBER_ID").value_or(member_id(info.rank));
  return info;
}

const LaunchInfo& launch_info() {
  static const LaunchInfo info = detect_launch();
  return info;
}

std::string random_store_token() {
  std::random_device rd;
  char buf[33];
  std::snprintf(buf, sizeof(buf), "%08x%08x%08x%08x", rd(), rd(), rd(), rd());
  return buf;
}

std::string find_store_program(const std::string& program) {
  for (const std::string& path : store_program_candidates(program)) {
    if (executable(path)) return path;
  }
  return "";
}

int start_store_process(const StoreProcessOptions& o) {
  const std::string program = find_store_program(o.program);
  if (program.empty()) {
    std::string looked;
    for (const auto& path : store_program_candidates(o.program)) {
      looked += (looked.empty() ? "" : ", ") + path;
    }
    throw ConfigError(o.who + ": cannot find the tenax-store program (looked at " + looked +
                      "): set TENAX_STORE_BIN to its path");
  }
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) throw StoreError(o.who + ": pipe failed");
  // The write end goes to the child as its fd 3 (dup2 clears close-on-exec there); stdio on
  // /dev/null; a session of its own. tenax-store --daemon forks once more before any thread
  // starts (a single-threaded program), so the store is reaped by init, not by this process.
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
  posix_spawn_file_actions_addopen(&fa, 2, "/dev/null", O_WRONLY, 0);
  posix_spawn_file_actions_adddup2(&fa, fds[1], 3);
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSID | POSIX_SPAWN_SETSIGMASK |
                                      POSIX_SPAWN_SETSIGDEF);
  sigset_t none, all;
  sigemptyset(&none);
  sigfillset(&all);
  posix_spawnattr_setsigmask(&attr, &none);  // not this thread's mask
  posix_spawnattr_setsigdefault(&attr, &all);  // nor this program's handlers
  const std::string port = std::to_string(o.port);
  const std::string idle = std::to_string(o.idle.count());
  std::vector<const char*> argv = {program.c_str(), "--daemon",  "--host",   o.host.c_str(),
                                   "--port",        port.c_str(), "--ready-fd", "3",
                                   "--idle-ms",     idle.c_str(), nullptr};
  std::vector<std::string> env_strings;
  for (char** e = environ; *e != nullptr; ++e) {
    if (std::string(*e).rfind("TENAX_STORE_TOKEN=", 0) != 0) env_strings.emplace_back(*e);
  }
  env_strings.push_back("TENAX_STORE_TOKEN=" + o.token);
  std::vector<char*> envp;
  for (auto& e : env_strings) envp.push_back(e.data());
  envp.push_back(nullptr);
  pid_t child = -1;
  const int rc = ::posix_spawn(&child, program.c_str(), &fa, &attr,
                               const_cast<char* const*>(argv.data()), envp.data());
  posix_spawn_file_actions_destroy(&fa);
  posix_spawnattr_destroy(&attr);
  ::close(fds[1]);
  if (rc != 0) {
    ::close(fds[0]);
    throw StoreError(o.who + ": cannot start " + program + ": " + std::strerror(rc));
  }
  ::waitpid(child, nullptr, 0);  // the first process leaves once the daemon is forked
  int bound = -1;
  pollfd p{fds[0], POLLIN, 0};
  if (::poll(&p, 1, 10000) <= 0 || ::read(fds[0], &bound, sizeof bound) != sizeof bound) {
    bound = -1;
  }
  ::close(fds[0]);
  if (bound <= 0) {
    throw StoreError(o.who + ": the store process (" + program + ") could not listen on " +
                     o.host + ":" + std::to_string(o.port));
  }
  return bound;
}

}  // namespace tenax
