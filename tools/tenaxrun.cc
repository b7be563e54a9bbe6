// tenaxrun: starts N ranks of a program on this host.
//
//   tenaxrun --nproc-per-node N [--timeout SEC] PROGRAM [ARGS...]
//
// Hosts the store, gives each rank RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE,
// MASTER_ADDR, MASTER_PORT, TENAX_STORE_ADDR and a fresh TENAX_STORE_TOKEN, prefixes each
// output line with "[rank N] ", forwards SIGINT/SIGTERM/SIGHUP to the ranks, and exits with the
// first non-zero status (128+signal for a rank killed by a signal), stopping the others.

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
               "tenaxrun: %s\nusage: tenaxrun --nproc-per-node N [--timeout SEC] PROGRAM "
               "[ARGS...]\n",
               msg);
  std::exit(2);
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

int exit_code(int status) {
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  int nproc = 0;
  std::string timeout;
  int i = 1;
  for (; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--nproc-per-node" || a == "--nproc_per_node") {
      if (i + 1 >= argc) usage("--nproc-per-node needs a value");
      char* end = nullptr;
      nproc = static_cast<int>(std::strtol(argv[++i], &end, 10));
      if (*end != '\0' || nproc < 1) usage("--nproc-per-node must be a positive integer");
    } else if (a == "--timeout") {
      if (i + 1 >= argc) usage("--timeout needs a value");
      timeout = argv[++i];
    } else if (a.rfind("--", 0) == 0) {
      usage(("unknown flag " + a).c_str());
    } else {
      break;
    }
  }
  if (nproc < 1) usage("--nproc-per-node is required");
  if (i >= argc) usage("no program given");

  std::random_device rd;
  char token[33];
  std::snprintf(token, sizeof(token), "%08x%08x%08x%08x", rd(), rd(), rd(), rd());
  std::unique_ptr<tenax::StoreServer> store;
  try {
    store = std::make_unique<tenax::StoreServer>("127.0.0.1", 0, token);
  } catch (const tenax::Error& e) {
    std::fprintf(stderr, "tenaxrun: cannot start the store: %s\n", e.what());
    return 1;
  }
  const std::string port = std::to_string(store->port());

  struct sigaction sa {};
  sa.sa_handler = on_signal;
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
  sigaction(SIGHUP, &sa, nullptr);
  signal(SIGPIPE, SIG_IGN);

  std::vector<Rank> ranks(nproc);
  for (int r = 0; r < nproc; ++r) {
    int out[2], err[2];
    if (pipe2(out, O_CLOEXEC) != 0 || pipe2(err, O_CLOEXEC) != 0) {
      std::perror("tenaxrun: pipe");
      return 1;
    }
    pid_t pid = fork();
    if (pid < 0) {
      std::perror("tenaxrun: fork");
      return 1;
    }
    if (pid == 0) {
      setpgid(0, 0);  // a rank and everything it starts get signals together
      dup2(out[1], 1);
      dup2(err[1], 2);
      setenv("RANK", std::to_string(r).c_str(), 1);
      setenv("WORLD_SIZE", std::to_string(nproc).c_str(), 1);
      setenv("LOCAL_RANK", std::to_string(r).c_str(), 1);
      setenv("LOCAL_WORLD_SIZE", std::to_string(nproc).c_str(), 1);
      setenv("MASTER_ADDR", "127.0.0.1", 1);
      setenv("MASTER_PORT", port.c_str(), 1);
      setenv("TENAX_STORE_ADDR", ("127.0.0.1:" + port).c_str(), 1);
      setenv("TENAX_STORE_TOKEN", token, 1);
      setenv("TENAX_LAUNCHER", "tenaxrun", 1);
      if (!timeout.empty()) setenv("TENAX_TIMEOUT", timeout.c_str(), 1);
      execvp(argv[i], argv + i);
      std::fprintf(stderr, "tenaxrun: cannot run %s: %s\n", argv[i], std::strerror(errno));
      _exit(127);
    }
    setpgid(pid, pid);
    close(out[1]);
    close(err[1]);
    ranks[r].pid = pid;
    ranks[r].out_fd = out[0];
    ranks[r].err_fd = err[0];
  }

  int first_failure = 0;
  int forwarded = 0;
  auto stop_time = std::chrono::steady_clock::time_point::max();
  bool killed = false;
  for (;;) {
    if (g_signal != 0 && forwarded != g_signal) {
      forwarded = g_signal;
      for (auto& rk : ranks) {
        kill(-rk.pid, g_signal);
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
      char buf[65536];
      ssize_t n = read(fds[k].fd, buf, sizeof(buf));
      std::string& acc = is_err ? ranks[r].err_buf : ranks[r].out_buf;
      FILE* out = is_err ? stderr : stdout;
      if (n > 0) {
        acc.append(buf, static_cast<size_t>(n));
        emit_lines(acc, out, r, false);
      } else if (n == 0 || (n < 0 && errno != EINTR && errno != EAGAIN)) {
        emit_lines(acc, out, r, true);
        close(fds[k].fd);
        (is_err ? ranks[r].err_fd : ranks[r].out_fd) = -1;
      }
    }
    int status = 0;
    pid_t pid;
    while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
      for (int r = 0; r < nproc; ++r) {
        if (ranks[r].pid != pid) continue;
        ranks[r].exited = true;
        ranks[r].status = status;
        int code = exit_code(status);
        if (code != 0 && first_failure == 0) {
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
  if (first_failure == 0 && g_signal != 0) return 128 + g_signal;
  return first_failure;
}
