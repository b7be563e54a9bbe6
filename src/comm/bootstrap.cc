#if TENAX_HAS_MPI
// Only the C API: the deprecated C++ bindings would need libmpi_cxx.
#define OMPI_SKIP_MPICXX 1
#define MPICH_SKIP_MPICXX 1
#include <mpi.h>
#endif

#include <fcntl.h>
#include <poll.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <random>
#include <sstream>
#include <string>
#include <thread>

#include "comm/net.h"
#include "tenax/comm/etcd_store.h"
#include "tenax/comm/flight_recorder.h"
#include "tenax/comm/init.h"
#include "tenax/core/config.h"
#include "tenax/core/error.h"
#include "tenax/core/logging.h"
#include "tenax/core/metrics.h"

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

std::string random_token() {
  std::random_device rd;
  char buf[33];
  std::snprintf(buf, sizeof(buf), "%08x%08x%08x%08x", rd(), rd(), rd(), rd());
  return buf;
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
    if (env_string("TENAX_STORE_ADDR")) parse_master(info);
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

namespace {

// Serves the store from a process of its own — forked twice, in its own session, stdio on
// /dev/null — so it outlives the rank that started it: under mpirun --enable-recovery the job
// survives rank 0's death. It leaves once it has had clients and none for 5 s (the job is
// over), or when nobody came within `idle` of its start. Returns the bound port.
int spawn_store_process(const std::string& bind_host, int port, const std::string& token,
                        std::chrono::milliseconds idle, const std::string& launcher) {
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) throw StoreError(launcher + " bootstrap: pipe failed");
  const pid_t child = ::fork();
  if (child < 0) throw StoreError(launcher + " bootstrap: fork failed for the store process");
  if (child == 0) {
    ::setsid();
    if (::fork() != 0) ::_exit(0);  // the store is the grandchild: init reaps it
    const int null = ::open("/dev/null", O_RDWR);
    for (int fd = 0; fd < 3; ++fd) ::dup2(null, fd);
    int bound = -1;
    try {
      StoreServer server(bind_host, port, token);
      bound = server.port();
      (void)!::write(fds[1], &bound, sizeof bound);
      ::close(fds[1]);
      using Clock = std::chrono::steady_clock;
      const auto start = Clock::now();
      auto busy = start;
      bool had = false;
      for (;;) {
        std::this_thread::sleep_for(std::chrono::milliseconds(200));
        const auto now = Clock::now();
        if (server.clients() > 0) {
          had = true;
          busy = now;
        } else if ((had && now - busy > std::chrono::seconds(5)) ||
                   (!had && now - start > idle)) {
          break;
        }
      }
    } catch (...) {
      if (bound < 0) (void)!::write(fds[1], &bound, sizeof bound);
      ::_exit(1);
    }
    ::_exit(0);
  }
  ::close(fds[1]);
  ::waitpid(child, nullptr, 0);
  int bound = -1;
  pollfd p{fds[0], POLLIN, 0};
  if (::poll(&p, 1, 10000) <= 0 || ::read(fds[0], &bound, sizeof bound) != sizeof bound) {
    bound = -1;
  }
  ::close(fds[0]);
  if (bound <= 0) {
    throw StoreError(launcher + " bootstrap: the store process could not listen on " + bind_host +
                     ":" + std::to_string(port));
  }
  return bound;
}

// Rank 0 starts the store (a process of its own, before MPI starts its threads); its address
// and a fresh token travel to the others over MPI, once.
void mpi_exchange_store(LaunchInfo& info) {
  const bool local_job = info.local_size == info.size;
  char buf[512] = {0};
  if (info.rank == 0) {
    std::string host = local_job ? "127.0.0.1" : detail::net::reachable_host_address();
    std::string token = info.token.empty() ? random_token() : info.token;
    const int port = spawn_store_process(local_job ? "127.0.0.1" : "0.0.0.0",
                                         static_cast<int>(env_int("TENAX_STORE_PORT", 0)),
                                         token, default_timeout() + std::chrono::seconds(60),
                                         "mpirun");
    std::snprintf(buf, sizeof(buf), "%s %d %s", host.c_str(), port, token.c_str());
  }
#if TENAX_HAS_MPI
  int initialized = 0;
  MPI_Initialized(&initialized);
  if (!initialized) MPI_Init(nullptr, nullptr);
  MPI_Bcast(buf, sizeof(buf), MPI_CHAR, 0, MPI_COMM_WORLD);
  if (!initialized) MPI_Finalize();
#else
  throw ConfigError("rank " + std::to_string(info.rank) + ": this tenax was built without Open "
                    "MPI, so under mpirun it cannot pass the store's address itself: set "
                    "TENAX_STORE_ADDR=host:port (a running tenax-store) for every rank");
#endif
  char host[256] = {0}, token[128] = {0};
  int port = 0;
  if (std::sscanf(buf, "%255s %d %127s", host, &port, token) != 3) {
    throw StoreError("mpirun bootstrap: rank 0 did not send a store address");
  }
  info.store_host = host;
  info.store_port = port;
  info.token = token;
}

}  // namespace

World connect(InitOptions options) {
  World w;
  w.info = detect_launch();
  LaunchInfo& info = w.info;
  const auto timeout = options.timeout.count() > 0 ? options.timeout : default_timeout();
  if (info.launcher == "mpirun" && info.store_host.empty() && info.store_address.empty()) {
    mpi_exchange_store(info);
  } else if (info.launcher == "single") {
    info.token = random_token();
    w.store_server = std::make_shared<StoreServer>("127.0.0.1", 0, info.token);
    info.store_host = "127.0.0.1";
    info.store_port = w.store_server->port();
  } else if (info.host_store) {
    if (info.token.empty()) {
      log(LogLevel::kWarning, "TENAX_STORE_TOKEN is not set: the store accepts any client that "
                              "knows its address");
    }
    // A process of its own, never this rank's: the job outlives rank 0.
    const bool local_job = info.local_size == info.size;
    spawn_store_process(local_job ? info.store_host : "0.0.0.0", info.store_port, info.token,
                        timeout + std::chrono::seconds(60), info.launcher);
  }
  if (!info.store_address.empty()) {
    w.store = open_store(info.store_address, info.token, timeout);
  } else {
    w.store = TcpStore::connect(info.store_host, info.store_port, info.token, timeout);
  }
  w.rank = info.rank;
  w.size = info.size;
  w.local_rank = info.local_rank;
  set_flight_identity("rank" + std::to_string(info.rank));
  set_log_context("rank", std::to_string(info.rank));
  metrics::registry().set_constant_label("rank", std::to_string(info.rank));
  return w;
}

World init(InitOptions options) {
  World w = connect(options);
  const LaunchInfo& info = w.info;
  const auto timeout = options.timeout.count() > 0 ? options.timeout : default_timeout();
  CommOptions copts;
  copts.timeout = timeout;
  copts.name = "world";
  if (info.local_size != info.size) copts.hostname = detail::net::reachable_host_address();
  w.comm = create_communicator(options.backend, w.store, info.rank, info.size, copts);
  return w;
}

}  // namespace tenax
