// tenaxrun: starts N ranks of a program on this host.
//
//   tenaxrun --nproc-per-node N [--timeout SEC] PROGRAM [ARGS...]
//   tenaxrun --nproc-per-node N --nnodes MIN:MAX [--max-restarts K] [--node-rank R]
//            [--spares S] [--rdzv-endpoint HOST:PORT [--host-store] | etcd://H:P,...]
//            PROGRAM [ARGS...]
//
// Hosts the store (or uses the one at --rdzv-endpoint, hosting it there with --host-store, or
// the etcd cluster it names: TENAX_STORE_ADDR=etcd://…, credentials from TENAX_ETCD_*),
// gives each rank RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT,
// TENAX_STORE_ADDR and TENAX_STORE_TOKEN (fresh, unless the environment has one), prefixes each
// output line with "[rank N] " and forwards SIGINT/SIGTERM/SIGHUP to the ranks. With 2 or more
// workers and no OMP_NUM_THREADS in its environment, gives them OMP_NUM_THREADS = cores /
// workers (at least 1), saying so once on stderr.
//
// Static (no --nnodes, no --max-restarts): exits with the first non-zero status (128+signal for
// a rank killed by a signal), stopping the others.
//
// Elastic (--nnodes MIN:MAX and/or --max-restarts): the job runs with MIN*N to MAX*N workers
// over one rendezvous (one tenaxrun per host, all at one endpoint, each with its own
// --node-rank); workers get TENAX_MIN_WORKERS, TENAX_MAX_WORKERS, TENAX_MEMBER_ID ("w<RANK>")
// and TENAX_RESTART_COUNT. A worker that fails does not stop the others (they re-form without
// it); it is restarted, up to K restarts in all, and rejoins. Every exit and restart is reported
// on stderr. Exits 0 when a worker finished the job (status 0), else with the first failure's.
// --spares S starts S more workers per host (ids continue after the host's N) that load, build
// and join as warm standby: workers get TENAX_ACTIVE_WORKERS = MAX*N, the job trains on that
// many, and a spare takes a lost worker's place at the next re-formation with no process start.
//
// --preflight: workers run the health checks before joining (TENAX_PREFLIGHT=1); a worker that
// fails them (or is evicted as a straggler) exits with status 76 and is not restarted.
//
// --metrics-port P (or TENAX_METRICS_PORT in tenaxrun's environment) serves this host's metrics
// on P (0: an ephemeral port) at TENAX_METRICS_ADDR (default 127.0.0.1): tenaxrun's own series
// (workers running, restarts, spares) and, fetched at each scrape and merged, those of its
// workers, which serve on P+1+local rank (they get TENAX_METRICS_PORT = P+1).
//
// Flags are Abseil flags, spelled with dashes or underscores (--nproc-per-node, --nproc_per_node),
// each followed by its value or joined to it by "="; the first argument that is not a flag (or
// the one after "--") is the program.

#include <absl/flags/flag.h>
#include <absl/flags/reflection.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "tenax/core/config.h"
#include "tenax/core/error.h"
#include "tenax/core/logging.h"
#include "tenax/core/metrics.h"
#include "tenax/elastic/rendezvous.h"
#include "tenax/health/health.h"
#include "tenax/observe/exposition.h"
#include "tenax/observe/observe.h"
#include "tenax/store/etcd_store.h"
#include "tenax/store/store_server.h"

ABSL_FLAG(int, nproc_per_node, 0, "ranks to start on this host (required)");
ABSL_FLAG(std::string, timeout, "", "TENAX_TIMEOUT of the ranks, in seconds");
ABSL_FLAG(std::string, nnodes, "", "MIN:MAX hosts of an elastic job, one tenaxrun on each");
ABSL_FLAG(int, max_restarts, 0, "elastic: restarts of failed workers, in all");
ABSL_FLAG(int, node_rank, 0, "this host's index among the job's hosts");
ABSL_FLAG(std::string, rdzv_endpoint, "",
          "HOST:PORT of the job's store, or etcd://H1:P1,H2:P2[/prefix] for an etcd cluster; "
          "shared by every host");
ABSL_FLAG(bool, host_store, false, "serve the store at --rdzv-endpoint from this host");
ABSL_FLAG(int, spares, 0, "elastic: warm spare workers per host, started ahead as standby");
ABSL_FLAG(bool, preflight, false,
          "workers run the health checks before joining (TENAX_PREFLIGHT=1); one that fails "
          "leaves with status 76 and is not restarted");
ABSL_FLAG(int, metrics_port, -1,
          "serve this host's metrics (tenaxrun's and its workers') on this port (0: any free "
          "one); workers serve on the ports after it. -1: TENAX_METRICS_PORT, else none");

namespace {

volatile sig_atomic_t g_signal = 0;
void on_signal(int sig) { g_signal = sig; }

struct Rank {
  pid_t pid = -1;
  int out_fd = -1, err_fd = -1;
  std::string out_buf, err_buf;
  bool exited = false;
  int status = 0;
};

[[noreturn]] void usage(const std::string& msg) {
  std::fprintf(stderr,
               "tenaxrun: %s\nusage: tenaxrun --nproc-per-node N [--timeout SEC] [--nnodes "
               "MIN:MAX] [--max-restarts K] [--node-rank R] [--rdzv-endpoint HOST:PORT "
               "[--host-store] | etcd://HOST:PORT,...] PROGRAM [ARGS...]\n",
               msg.c_str());
  std::exit(2);
}

std::string dashed(std::string name) {
  for (auto& c : name) c = c == '_' ? '-' : c;
  return "--" + name;
}

// The smallest value of each integer flag.
const std::map<std::string, int> kLowest = {{"nproc_per_node", 1},
                                            {"max_restarts", 0},
                                            {"node_rank", 0},
                                            {"spares", 0},
                                            {"metrics_port", 0}};

[[noreturn]] void bad_integer(const std::string& name, const std::string& text) {
  usage(dashed(name) + " must be a " + (kLowest.at(name) > 0 ? "positive" : "non-negative") +
        " integer, not '" + text + "'");
}

// Parses tenaxrun's own flags, up to the program: --flag value or --flag=value, spelled with
// dashes or underscores ("--" ends them). Returns the program's index in argv; `given` gets the
// flags that were set.
int parse_flags(int argc, char** argv, std::set<std::string>& given) {
  int i = 1;
  for (; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "--") return i + 1;
    if (arg.rfind("--", 0) != 0) break;
    std::string name = arg.substr(2), value;
    const size_t eq = name.find('=');
    const bool inline_value = eq != std::string::npos;
    if (inline_value) {
      value = name.substr(eq + 1);
      name.resize(eq);
    }
    for (auto& c : name) c = c == '-' ? '_' : c;
    absl::CommandLineFlag* flag = absl::FindCommandLineFlag(name);
    if (flag == nullptr) usage("unknown flag " + arg);
    if (!inline_value) {
      if (flag->IsOfType<bool>()) {
        value = "true";
      } else if (i + 1 >= argc) {
        usage(dashed(name) + " needs a value");
      } else {
        value = argv[++i];
      }
    }
    std::string error;
    if (!flag->ParseFrom(value, &error)) {
      if (kLowest.count(name)) bad_integer(name, value);
      usage(dashed(name) + ": " + error);
    }
    auto low = kLowest.find(name);
    if (low != kLowest.end() && std::stoi(value) < low->second) bad_integer(name, value);
    given.insert(name);
  }
  return i;
}

// What this agent runs, from its flags.
struct Plan {
  int nproc = 0, min_nodes = 1, max_nodes = 1, max_restarts = 0, node_rank = 0, spares = 0;
  int metrics_port = -1;                          // -1: no endpoint
  bool preflight = false;
  int workers() const { return nproc + spares; }  // processes this agent runs
  bool elastic = false, host_store = false;
  std::string timeout, endpoint;
  // OMP_NUM_THREADS for the workers when the environment has none; empty: leave it unset.
  std::string omp_threads;
  char** program = nullptr;  // null-terminated, as execvp wants it
};

// Intra-op threads a worker gets: the host's cores shared out among this host's workers, as
// torchrun does (it sets 1), when the environment does not say. Without it every worker runs
// as many OpenMP (and OpenBLAS) threads as there are cores, and N workers oversubscribe the
// host N-fold; their threads then wait on each other.
std::string omp_threads_for(int workers) {
  if (workers < 2 || std::getenv("OMP_NUM_THREADS") != nullptr) return "";
  const unsigned cores = std::max(1u, std::thread::hardware_concurrency());
  return std::to_string(std::max(1u, cores / static_cast<unsigned>(workers)));
}

Plan read_plan(int argc, char** argv) {
  std::set<std::string> given;
  const int first = parse_flags(argc, argv, given);
  Plan p;
  p.nproc = absl::GetFlag(FLAGS_nproc_per_node);
  p.timeout = absl::GetFlag(FLAGS_timeout);
  p.max_restarts = absl::GetFlag(FLAGS_max_restarts);
  p.node_rank = absl::GetFlag(FLAGS_node_rank);
  p.endpoint = absl::GetFlag(FLAGS_rdzv_endpoint);
  p.host_store = absl::GetFlag(FLAGS_host_store);
  p.spares = absl::GetFlag(FLAGS_spares);
  p.metrics_port = absl::GetFlag(FLAGS_metrics_port);
  p.preflight = absl::GetFlag(FLAGS_preflight);
  p.elastic = given.count("nnodes") > 0 || given.count("max_restarts") > 0;
  if (given.count("nnodes")) {
    const std::string v = absl::GetFlag(FLAGS_nnodes);
    const size_t colon = v.find(':');
    auto count = [](const std::string& text, const char* what) {
      char* end = nullptr;
      const long n = std::strtol(text.c_str(), &end, 10);
      if (text.empty() || *end != '\0' || n < 1) {
        usage(std::string("--nnodes ") + what + " must be a positive integer, not '" + text + "'");
      }
      return static_cast<int>(n);
    };
    p.min_nodes = count(v.substr(0, colon), "MIN");
    p.max_nodes = colon == std::string::npos ? p.min_nodes : count(v.substr(colon + 1), "MAX");
    if (p.max_nodes < p.min_nodes) usage("--nnodes MIN:MAX needs MIN <= MAX");
  }
  if (tenax::EtcdOptions::is_etcd_address(p.endpoint)) {
    try {
      tenax::EtcdOptions::from_environment(p.endpoint);
    } catch (const tenax::Error& e) {
      usage(std::string("--rdzv-endpoint: ") + e.what());
    }
    if (p.host_store) usage("--host-store serves a TCP store; an etcd cluster runs on its own");
  } else if (!p.endpoint.empty() && p.endpoint.find(':') == std::string::npos) {
    usage("--rdzv-endpoint must be HOST:PORT or etcd://HOST:PORT[,HOST:PORT...]");
  }
  if (p.nproc < 1) usage("--nproc-per-node is required");
  if (p.spares < 0) usage("--spares must be 0 or more");
  if (p.spares > 0 && !p.elastic) usage("--spares needs an elastic job (--nnodes or --max-restarts)");
  if (first >= argc) usage("no program given");
  if (p.host_store && p.endpoint.empty()) usage("--host-store needs --rdzv-endpoint");
  p.program = argv + first;
  p.omp_threads = omp_threads_for(p.workers());
  return p;
}

// Writes the complete lines of `buf` to `out`, each prefixed; keeps the incomplete tail.
void emit_lines(std::string& buf, FILE* out, int rank, bool flush_all) {
  size_t start = 0;
  for (;;) {
    size_t nl = buf.find('\n', start);
    if (nl == std::string::npos) break;
    std::fprintf(out, "[rank %d] %.*s\n", rank, static_cast<int>(nl - start), buf.data() + start);
    start = nl + 1;
  }
  buf.erase(0, start);
  if (flush_all && !buf.empty()) {
    std::fprintf(out, "[rank %d] %s\n", rank, buf.c_str());
    buf.clear();
  }
  std::fflush(out);
}

// Emits what is readable from `fd` now, then closes it.
void drain(int& fd, std::string& buf, FILE* out, int rank) {
  if (fd < 0) return;
  pollfd p{fd, POLLIN, 0};
  char chunk[65536];
  while (poll(&p, 1, 0) > 0 && (p.revents & POLLIN)) {
    const ssize_t n = read(fd, chunk, sizeof(chunk));
    if (n <= 0) break;
    buf.append(chunk, static_cast<size_t>(n));
  }
  emit_lines(buf, out, rank, true);
  close(fd);
  fd = -1;
}

int exit_code(int status) {
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return 1;
}


// The store the ranks use: this agent's own (no endpoint), or the one at --rdzv-endpoint, served
// from here with --host-store. An endpoint is shared by every host's agent, and so is the
// environment's token; otherwise the token is fresh.
struct Store {
  std::string host = "127.0.0.1", port, token;
  std::string etcd;  // the etcd address, when the store is an etcd cluster
  std::unique_ptr<tenax::StoreServer> server;
};

Store start_store(const Plan& plan) {
  std::random_device rd;
  char fresh[33];
  std::snprintf(fresh, sizeof(fresh), "%08x%08x%08x%08x", rd(), rd(), rd(), rd());
  const auto env_token = tenax::env_string("TENAX_STORE_TOKEN");
  Store st;
  st.token = plan.endpoint.empty() || !env_token ? fresh : *env_token;
  if (tenax::EtcdOptions::is_etcd_address(plan.endpoint)) {
    st.etcd = plan.endpoint;
  } else if (plan.endpoint.empty()) {
    st.server = std::make_unique<tenax::StoreServer>("127.0.0.1", 0, st.token,
                                                       tenax::StoreLimits::from_environment());
    st.port = std::to_string(st.server->port());
  } else {
    st.host = plan.endpoint.substr(0, plan.endpoint.rfind(':'));
    st.port = plan.endpoint.substr(plan.endpoint.rfind(':') + 1);
    if (plan.host_store) {
      st.server =
          std::make_unique<tenax::StoreServer>("0.0.0.0", std::atoi(st.port.c_str()), st.token,
                                               tenax::StoreLimits::from_environment());
    }
  }
  return st;
}

// Starts this host's ranks, relays their output line by line, restarts failed elastic workers,
// and ends when every rank has exited.
class Agent {
 public:
  Agent(const Plan& plan, const Store& store)
      : plan_(plan), store_(store), ranks_(plan.workers()) {}

  // Forks local rank `local` with the launcher's environment. False when it could not.
  bool spawn(int local, int restart_count);
  // Until every rank has exited; returns tenaxrun's exit status.
  int supervise();

 private:
  int global_rank(int local) const { return plan_.node_rank * plan_.workers() + local; }
  // The child's side of spawn(): environment, then exec. Never returns.
  [[noreturn]] void exec_rank(int local, int restart_count);
  void relay_output();
  void reap();
  void on_exit(int local, int code);
  // On etcd, which learns of a death only when a lease expires: marks the failed worker gone
  // in the store at once, so the others re-form without waiting for it.
  void mark_gone(int worker);

  const Plan& plan_;
  const Store& store_;
  std::shared_ptr<tenax::Store> client_;  // this agent's own store client (mark_gone)
  std::vector<Rank> ranks_;
  int restarts_ = 0;
  int first_failure_ = 0;
  bool finished_ = false;  // elastic: some worker completed the job
  int forwarded_ = 0;      // the signal last forwarded to the ranks
  std::chrono::steady_clock::time_point stop_time_ = std::chrono::steady_clock::time_point::max();
  bool killed_ = false;

 public:
  // The host endpoint's port (-1: none); workers serve on the ports after it.
  int metrics_port = -1;
  struct Series {
    tenax::metrics::Gauge* running;
    tenax::metrics::Counter* restarts;
    tenax::metrics::Counter* failures;
  } series{};
};

void Agent::exec_rank(int local, int restart_count) {
  const int r = global_rank(local);
  const int world = plan_.elastic ? plan_.max_nodes * plan_.workers() : plan_.nproc;
  setpgid(0, 0);  // a rank and everything it starts get signals together
  setenv("RANK", std::to_string(r).c_str(), 1);
  setenv("WORLD_SIZE", std::to_string(world).c_str(), 1);
  setenv("LOCAL_RANK", std::to_string(local).c_str(), 1);
  setenv("LOCAL_WORLD_SIZE", std::to_string(plan_.workers()).c_str(), 1);
  if (store_.etcd.empty()) {
    setenv("MASTER_ADDR", store_.host.c_str(), 1);
    setenv("MASTER_PORT", store_.port.c_str(), 1);
    setenv("TENAX_STORE_ADDR", (store_.host + ":" + store_.port).c_str(), 1);
  } else {
    setenv("TENAX_STORE_ADDR", store_.etcd.c_str(), 1);
  }
  setenv("TENAX_STORE_TOKEN", store_.token.c_str(), 1);
  setenv("TENAX_LAUNCHER", "tenaxrun", 1);
  if (plan_.elastic) {
    setenv("TENAX_MIN_WORKERS", std::to_string(plan_.min_nodes * plan_.nproc).c_str(), 1);
    setenv("TENAX_MAX_WORKERS", std::to_string(plan_.max_nodes * plan_.workers()).c_str(), 1);
    // With spares, the job trains on the ranks it asked for; the spares wait as standby.
    if (plan_.spares > 0) {
      setenv("TENAX_ACTIVE_WORKERS", std::to_string(plan_.max_nodes * plan_.nproc).c_str(), 1);
    }
    setenv("TENAX_MEMBER_ID", ("w" + std::to_string(r)).c_str(), 1);
    setenv("TENAX_RESTART_COUNT", std::to_string(restart_count).c_str(), 1);
  }
  if (!plan_.timeout.empty()) setenv("TENAX_TIMEOUT", plan_.timeout.c_str(), 1);
  if (!plan_.omp_threads.empty()) setenv("OMP_NUM_THREADS", plan_.omp_threads.c_str(), 0);
  if (plan_.preflight) setenv("TENAX_PREFLIGHT", "1", 1);
  if (metrics_port > 0) setenv("TENAX_METRICS_PORT", std::to_string(metrics_port + 1).c_str(), 1);
  execvp(plan_.program[0], plan_.program);
  std::fprintf(stderr, "tenaxrun: cannot run %s: %s\n", plan_.program[0], std::strerror(errno));
  _exit(127);
}

bool Agent::spawn(int local, int restart_count) {
  int out[2], err[2];
  if (pipe2(out, O_CLOEXEC) != 0 || pipe2(err, O_CLOEXEC) != 0) {
    std::perror("tenaxrun: pipe");
    return false;
  }
  pid_t pid = fork();
  if (pid < 0) {
    std::perror("tenaxrun: fork");
    return false;
  }
  if (pid == 0) {
    dup2(out[1], 1);
    dup2(err[1], 2);
    exec_rank(local, restart_count);
  }
  setpgid(pid, pid);
  close(out[1]);
  close(err[1]);
  Rank& rk = ranks_[local];
  rk = Rank();
  rk.pid = pid;
  rk.out_fd = out[0];
  rk.err_fd = err[0];
  series.running->add(1);
  return true;
}

// Waits up to 100 ms for output and relays every complete line, prefixed with its rank.
void Agent::relay_output() {
  std::vector<pollfd> fds;
  std::vector<std::pair<int, bool>> owners;  // (local rank, is_stderr)
  for (int r = 0; r < plan_.workers(); ++r) {
    if (ranks_[r].out_fd >= 0) {
      fds.push_back({ranks_[r].out_fd, POLLIN, 0});
      owners.emplace_back(r, false);
    }
    if (ranks_[r].err_fd >= 0) {
      fds.push_back({ranks_[r].err_fd, POLLIN, 0});
      owners.emplace_back(r, true);
    }
  }
  poll(fds.data(), fds.size(), 100);
  for (size_t k = 0; k < fds.size(); ++k) {
    if (fds[k].revents == 0) continue;
    auto [r, is_err] = owners[k];
    char buf[65536];
    ssize_t n = read(fds[k].fd, buf, sizeof(buf));
    std::string& acc = is_err ? ranks_[r].err_buf : ranks_[r].out_buf;
    FILE* out = is_err ? stderr : stdout;
    if (n > 0) {
      acc.append(buf, static_cast<size_t>(n));
      emit_lines(acc, out, global_rank(r), false);
    } else if (n == 0 || (n < 0 && errno != EINTR && errno != EAGAIN)) {
      emit_lines(acc, out, global_rank(r), true);
      close(fds[k].fd);
      (is_err ? ranks_[r].err_fd : ranks_[r].out_fd) = -1;
    }
  }
}

// A rank exited with `code`: static jobs stop the others on the first failure; elastic ones
// restart the worker while restarts remain, and the others go on.
void Agent::on_exit(int local, int code) {
  const int shown = global_rank(local);
  if (!plan_.elastic) {
    if (code == 0 || first_failure_ != 0) return;
    first_failure_ = code;
    std::fprintf(stderr, "tenaxrun: rank %d exited with status %d; stopping the others\n", local,
                 code);
    for (auto& other : ranks_) kill(-other.pid, SIGTERM);
    stop_time_ = std::chrono::steady_clock::now() + std::chrono::seconds(5);
    return;
  }
  series.running->add(-1);
  if (code != 0) {
    series.failures->inc();
    mark_gone(shown);
  }
  if (code == 0) {
    finished_ = true;
    std::fprintf(stderr, "tenaxrun: worker w%d finished\n", shown);
  } else if (code == tenax::kUnhealthyExitCode) {
    // Kept out by a health check (preflight, or evicted as a straggler): not restarted.
    if (first_failure_ == 0) first_failure_ = code;
    std::fprintf(stderr,
                 "tenaxrun: worker w%d failed its health checks (status %d); not restarted, the "
                 "others go on without it\n",
                 shown, code);
  } else if (restarts_ < plan_.max_restarts && g_signal == 0 && !finished_) {
    ++restarts_;
    series.restarts->inc();
    std::fprintf(stderr,
                 "tenaxrun: worker w%d exited with status %d; restarting it (restart %d of %d)\n",
                 shown, code, restarts_, plan_.max_restarts);
    // What the dead worker left in its pipes comes out first; the new one gets fresh ones.
    drain(ranks_[local].out_fd, ranks_[local].out_buf, stdout, shown);
    drain(ranks_[local].err_fd, ranks_[local].err_buf, stderr, shown);
    if (!spawn(local, restarts_) && first_failure_ == 0) first_failure_ = 1;
  } else {
    if (first_failure_ == 0) first_failure_ = code;
    std::fprintf(stderr,
                 "tenaxrun: worker w%d exited with status %d; not restarted (%d of %d restarts "
                 "used); the others go on without it\n",
                 shown, code, restarts_, plan_.max_restarts);
  }
}

void Agent::mark_gone(int worker) {
  if (store_.etcd.empty()) return;  // the TCP store sees the worker's connections drop at once
  const std::string id = "w" + std::to_string(worker);  // its TENAX_MEMBER_ID
  try {
    if (!client_) client_ = tenax::open_store(store_.etcd, store_.token, std::chrono::seconds(2));
    if (auto key = client_->try_get(tenax::Rendezvous::agent_key(id))) client_->set(*key, "1");
  } catch (const tenax::Error& e) {
    std::fprintf(stderr, "tenaxrun: could not mark worker %s gone in the store: %s\n", id.c_str(),
                 e.what());
    client_.reset();
  }
}

void Agent::reap() {
  int status = 0;
  pid_t pid;
  while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
    for (int r = 0; r < plan_.workers(); ++r) {
      if (ranks_[r].pid != pid || ranks_[r].exited) continue;
      ranks_[r].exited = true;
      ranks_[r].status = status;
      on_exit(r, exit_code(status));
    }
  }
}

int Agent::supervise() {
  for (;;) {
    if (g_signal != 0 && forwarded_ != g_signal) {
      forwarded_ = g_signal;
      for (auto& rk : ranks_) {
        if (!rk.exited) kill(-rk.pid, g_signal);
      }
    }
    relay_output();
    reap();
    if (!killed_ && std::chrono::steady_clock::now() > stop_time_) {
      killed_ = true;
      for (auto& other : ranks_) kill(-other.pid, SIGKILL);
    }
    bool all_done = true;
    for (auto& rk : ranks_) all_done &= rk.exited && rk.out_fd < 0 && rk.err_fd < 0;
    if (all_done) break;
  }
  if (plan_.elastic && finished_ && g_signal == 0) return 0;
  // An elastic job told to stop (preemption) whose workers all saved and left cleanly: 0.
  if (first_failure_ == 0 && g_signal != 0) return plan_.elastic && finished_ ? 0 : 128 + g_signal;
  return first_failure_;
}

// This host's endpoint (null when no port is configured): tenaxrun's series and its workers'.
std::unique_ptr<tenax::observe::MetricsServer> serve_metrics(const Plan& plan, Agent& agent) {
  auto& reg = tenax::metrics::registry();
  agent.series.running = &reg.gauge("tenax_agent_workers_running", "Workers this agent runs now");
  agent.series.restarts =
      &reg.counter("tenax_agent_restarts_total", "Failed workers this agent restarted");
  agent.series.failures =
      &reg.counter("tenax_agent_worker_failures_total", "Workers that exited with an error");
  reg.gauge("tenax_agent_spares", "Warm spare workers this agent starts").set(plan.spares);
  reg.gauge("tenax_agent_workers", "Workers this agent starts (ranks and spares)")
      .set(plan.workers());
  int port = plan.metrics_port;
  if (port < 0) port = static_cast<int>(tenax::settings().observe.metrics_port);
  if (port < 0) return nullptr;
  const std::string job = tenax::settings().observe.job;
  reg.set_constant_label("job", job.empty() ? "tenax" : job);
  reg.set_constant_label("host", tenax::host_name());
  reg.set_constant_label("node_rank", std::to_string(plan.node_rank));
  const std::string address = tenax::settings().observe.metrics_address;
  const int workers = plan.workers();
  auto base = std::make_shared<std::atomic<int>>(0);
  auto server = std::make_unique<tenax::observe::MetricsServer>(
      address, port,
      [base, workers, address] {
        std::vector<std::string> texts{tenax::metrics::registry().render()};
        const std::string peer = address == "0.0.0.0" ? "127.0.0.1" : address;
        for (int i = 0; i < workers; ++i) {
          // A worker starting, restarting or gone answers nothing: its series are absent.
          if (auto t = tenax::observe::fetch_metrics(peer, base->load() + 1 + i, 500)) {
            texts.push_back(std::move(*t));
          }
        }
        return tenax::observe::merge_expositions(texts);
      },
      "--metrics-port " + std::to_string(port));
  base->store(server->port());
  agent.metrics_port = server->port();
  std::fprintf(stderr, "tenaxrun: metrics of this host at http://%s:%d/metrics\n", address.c_str(),
               server->port());
  return server;
}

}  // namespace

int main(int argc, char** argv) {
  const Plan plan = read_plan(argc, argv);
  Store store;
  try {
    tenax::set_log_options(tenax::LogOptions::from_environment());
    store = start_store(plan);
  } catch (const tenax::Error& e) {
    std::fprintf(stderr, "tenaxrun: cannot start the store: %s\n", e.what());
    return 1;
  }
  struct sigaction sa {};
  sa.sa_handler = on_signal;
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
  sigaction(SIGHUP, &sa, nullptr);
  signal(SIGPIPE, SIG_IGN);
  if (!plan.omp_threads.empty()) {
    std::fprintf(stderr,
                 "tenaxrun: OMP_NUM_THREADS=%s for each of the %d workers on %u cores (set "
                 "OMP_NUM_THREADS to choose)\n",
                 plan.omp_threads.c_str(), plan.workers(), std::thread::hardware_concurrency());
  }
  Agent agent(plan, store);
  std::unique_ptr<tenax::observe::MetricsServer> metrics;
  try {
    metrics = serve_metrics(plan, agent);
  } catch (const tenax::Error& e) {
    std::fprintf(stderr, "tenaxrun: %s\n", e.what());
    return 1;
  }
  for (int r = 0; r < plan.workers(); ++r) {
    if (!agent.spawn(r, 0)) return 1;
  }
  return agent.supervise();
}
