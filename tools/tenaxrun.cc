// tenaxrun: starts N ranks of a program on this host.
//
//   tenaxrun --nproc-per-node N [--timeout SEC] PROGRAM [ARGS...]
//   tenaxrun --nproc-per-node N --nnodes MIN:MAX [--max-restarts K] [--node-rank R]
//            [--rdzv-endpoint HOST:PORT [--host-store]] PROGRAM [ARGS...]
//
// Hosts the store (or uses the one at --rdzv-endpoint, hosting it there with --host-store),
// gives each rank RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT,
// TENAX_STORE_ADDR and TENAX_STORE_TOKEN (fresh, unless the environment has one), prefixes each
// output line with "[rank N] " and forwards SIGINT/SIGTERM/SIGHUP to the ranks.
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

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "tenax/comm/store_server.h"
#include "tenax/core/error.h"

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

[[noreturn]] void usage(const char* msg) {
  std::fprintf(stderr,
               "tenaxrun: %s\nusage: tenaxrun --nproc-per-node N [--timeout SEC] [--nnodes "
               "MIN:MAX] [--max-restarts K] [--node-rank R] [--rdzv-endpoint HOST:PORT "
               "[--host-store]] PROGRAM [ARGS...]\n",
               msg);
  std::exit(2);
}

int positive(const char* flag, const std::string& text, int lowest) {
  char* end = nullptr;
  const long v = std::strtol(text.c_str(), &end, 10);
  if (text.empty() || *end != '\0' || v < lowest) {
    usage((std::string(flag) + " must be a " + (lowest > 0 ? "positive" : "non-negative") +
           " integer, not '" + text + "'").c_str());
  }
  return static_cast<int>(v);
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

}  // namespace

int main(int argc, char** argv) {
  int nproc = 0, min_nodes = 1, max_nodes = 1, max_restarts = 0, node_rank = 0;
  bool elastic = false, host_store = false;
  std::string timeout, endpoint;
  int i = 1;
  for (; i < argc; ++i) {
    std::string a = argv[i];
    for (auto& c : a) c = c == '_' ? '-' : c;
    auto value = [&](const char* flag) -> std::string {
      if (i + 1 >= argc) usage((std::string(flag) + " needs a value").c_str());
      return argv[++i];
    };
    if (a == "--nproc-per-node") {
      nproc = positive("--nproc-per-node", value("--nproc-per-node"), 1);
    } else if (a == "--timeout") {
      timeout = value("--timeout");
    } else if (a == "--nnodes") {
      const std::string v = value("--nnodes");
      const size_t colon = v.find(':');
      min_nodes = positive("--nnodes MIN", v.substr(0, colon), 1);
      max_nodes = colon == std::string::npos ? min_nodes
                                             : positive("--nnodes MAX", v.substr(colon + 1), 1);
      if (max_nodes < min_nodes) usage("--nnodes MIN:MAX needs MIN <= MAX");
      elastic = true;
    } else if (a == "--max-restarts") {
      max_restarts = positive("--max-restarts", value("--max-restarts"), 0);
      elastic = true;
    } else if (a == "--node-rank") {
      node_rank = positive("--node-rank", value("--node-rank"), 0);
    } else if (a == "--rdzv-endpoint") {
      endpoint = value("--rdzv-endpoint");
      if (endpoint.find(':') == std::string::npos) usage("--rdzv-endpoint must be HOST:PORT");
    } else if (a == "--host-store") {
      host_store = true;
    } else if (a.rfind("--", 0) == 0) {
      usage(("unknown flag " + a).c_str());
    } else {
      break;
    }
  }
  if (nproc < 1) usage("--nproc-per-node is required");
  if (i >= argc) usage("no program given");
  if (host_store && endpoint.empty()) usage("--host-store needs --rdzv-endpoint");

  std::random_device rd;
  char fresh[33];
  std::snprintf(fresh, sizeof(fresh), "%08x%08x%08x%08x", rd(), rd(), rd(), rd());
  // An external endpoint is shared by every host's agent: they share the environment's token.
  const char* env_token = std::getenv("TENAX_STORE_TOKEN");
  const std::string token = endpoint.empty() || !env_token ? fresh : env_token;
  std::string store_host = "127.0.0.1", port;
  std::unique_ptr<tenax::StoreServer> store;
  try {
    if (endpoint.empty()) {
      store = std::make_unique<tenax::StoreServer>("127.0.0.1", 0, token);
      port = std::to_string(store->port());
    } else {
      store_host = endpoint.substr(0, endpoint.rfind(':'));
      port = endpoint.substr(endpoint.rfind(':') + 1);
      if (host_store) {
        store = std::make_unique<tenax::StoreServer>("0.0.0.0", std::atoi(port.c_str()), token);
      }
    }
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

  const int world = elastic ? max_nodes * nproc : nproc;
  std::vector<Rank> ranks(nproc);
  int restarts = 0;
  auto spawn = [&](int local, int restart_count) -> bool {
    const int r = node_rank * nproc + local;
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
      setpgid(0, 0);  // a rank and everything it starts get signals together
      dup2(out[1], 1);
      dup2(err[1], 2);
      setenv("RANK", std::to_string(r).c_str(), 1);
      setenv("WORLD_SIZE", std::to_string(world).c_str(), 1);
      setenv("LOCAL_RANK", std::to_string(local).c_str(), 1);
      setenv("LOCAL_WORLD_SIZE", std::to_string(nproc).c_str(), 1);
      setenv("MASTER_ADDR", store_host.c_str(), 1);
      setenv("MASTER_PORT", port.c_str(), 1);
      setenv("TENAX_STORE_ADDR", (store_host + ":" + port).c_str(), 1);
      setenv("TENAX_STORE_TOKEN", token.c_str(), 1);
      setenv("TENAX_LAUNCHER", "tenaxrun", 1);
      if (elastic) {
        setenv("TENAX_MIN_WORKERS", std::to_string(min_nodes * nproc).c_str(), 1);
        setenv("TENAX_MAX_WORKERS", std::to_string(max_nodes * nproc).c_str(), 1);
        setenv("TENAX_MEMBER_ID", ("w" + std::to_string(r)).c_str(), 1);
        setenv("TENAX_RESTART_COUNT", std::to_string(restart_count).c_str(), 1);
      }
      if (!timeout.empty()) setenv("TENAX_TIMEOUT", timeout.c_str(), 1);
      execvp(argv[i], argv + i);
      std::fprintf(stderr, "tenaxrun: cannot run %s: %s\n", argv[i], std::strerror(errno));
      _exit(127);
    }
    setpgid(pid, pid);
    close(out[1]);
    close(err[1]);
    Rank& rk = ranks[local];
    rk = Rank();
    rk.pid = pid;
    rk.out_fd = out[0];
    rk.err_fd = err[0];
    return true;
  };
  for (int r = 0; r < nproc; ++r) {
    if (!spawn(r, 0)) return 1;
  }

  int first_failure = 0;
  bool finished = false;  // elastic: some worker completed the job
  int forwarded = 0;
  auto stop_time = std::chrono::steady_clock::time_point::max();
  bool killed = false;
  for (;;) {
    if (g_signal != 0 && forwarded != g_signal) {
      forwarded = g_signal;
      for (auto& rk : ranks) {
        if (!rk.exited) kill(-rk.pid, g_signal);
      }
    }
    std::vector<pollfd> fds;
    std::vector<std::pair<int, bool>> owners;  // (rank, is_stderr)
    for (int r = 0; r < nproc; ++r) {
      if (ranks[r].out_fd >= 0) {
        fds.push_back({ranks[r].out_fd, POLLIN, 0});
        owners.emplace_back(r, false);
      }
      if (ranks[r].err_fd >= 0) {
        fds.push_back({ranks[r].err_fd, POLLIN, 0});
        owners.emplace_back(r, true);
      }
    }
    poll(fds.data(), fds.size(), 100);
    for (size_t k = 0; k < fds.size(); ++k) {
      if (fds[k].revents == 0) continue;
      auto [r, is_err] = owners[k];
      const int shown = node_rank * nproc + r;
      char buf[65536];
      ssize_t n = read(fds[k].fd, buf, sizeof(buf));
      std::string& acc = is_err ? ranks[r].err_buf : ranks[r].out_buf;
      FILE* out = is_err ? stderr : stdout;
      if (n > 0) {
        acc.append(buf, static_cast<size_t>(n));
        emit_lines(acc, out, shown, false);
      } else if (n == 0 || (n < 0 && errno != EINTR && errno != EAGAIN)) {
        emit_lines(acc, out, shown, true);
        close(fds[k].fd);
        (is_err ? ranks[r].err_fd : ranks[r].out_fd) = -1;
      }
    }
    int status = 0;
    pid_t pid;
    while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
      for (int r = 0; r < nproc; ++r) {
        if (ranks[r].pid != pid || ranks[r].exited) continue;
        ranks[r].exited = true;
        ranks[r].status = status;
        const int code = exit_code(status);
        const int shown = node_rank * nproc + r;
        if (elastic) {
          if (code == 0) {
            finished = true;
            std::fprintf(stderr, "tenaxrun: worker w%d finished\n", shown);
          } else if (restarts < max_restarts && g_signal == 0 && !finished) {
            ++restarts;
            std::fprintf(stderr,
                         "tenaxrun: worker w%d exited with status %d; restarting it (restart %d "
                         "of %d)\n",
                         shown, code, restarts, max_restarts);
            // What the dead worker left in its pipes comes out first; the new one gets fresh.
            drain(ranks[r].out_fd, ranks[r].out_buf, stdout, shown);
            drain(ranks[r].err_fd, ranks[r].err_buf, stderr, shown);
            if (!spawn(r, restarts)) return 1;
          } else {
            if (first_failure == 0) first_failure = code;
            std::fprintf(stderr, "tenaxrun: worker w%d exited with status %d; not restarted "
                         "(%d of %d restarts used); the others go on without it\n",
                         shown, code, restarts, max_restarts);
          }
        } else if (code != 0 && first_failure == 0) {
          first_failure = code;
          std::fprintf(stderr, "tenaxrun: rank %d exited with status %d; stopping the others\n",
                       r, code);
          for (auto& other : ranks) kill(-other.pid, SIGTERM);
          stop_time = std::chrono::steady_clock::now() + std::chrono::seconds(5);
        }
      }
    }
    if (!killed && std::chrono::steady_clock::now() > stop_time) {
      killed = true;
      for (auto& other : ranks) kill(-other.pid, SIGKILL);
    }
    bool all_done = true;
    for (auto& rk : ranks) all_done &= rk.exited && rk.out_fd < 0 && rk.err_fd < 0;
    if (all_done) break;
  }
  if (elastic && finished && g_signal == 0) return 0;
  if (first_failure == 0 && g_signal != 0) return 128 + g_signal;
  return first_failure;
}
