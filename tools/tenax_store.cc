// tenax-store: a standalone store server, for jobs whose store must outlive every rank.
// Usage: tenax-store [--host HOST] [--port PORT] [--daemon] [--ready-fd FD] [--idle-ms MS]
// The token is TENAX_STORE_TOKEN. It links the store layer alone: no LibTorch in its memory.
//   plain        prints "tenax-store listening on HOST:PORT" once ready, then serves until
//                SIGINT/SIGTERM;
//   --ready-fd   writes the bound port (a native int; -1 when it cannot listen) to FD and
//                closes it, instead of printing;
//   --idle-ms    leaves once it has had clients and none for 5 s, or when nobody came within
//                MS of its start (how ranks start it: start_store_process);
//   --daemon     forks once before anything else (this program has no thread yet) and serves
//                from the child, so the process that started it can reap the parent at once.

#include <pthread.h>
#include <unistd.h>

#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>

#include "tenax/core/config.h"
#include "tenax/core/error.h"
#include "tenax/core/logging.h"
#include "tenax/store/store_server.h"

namespace {

int usage(const char* self) {
  std::fprintf(stderr,
               "usage: %s [--host HOST] [--port PORT] [--daemon] [--ready-fd FD] "
               "[--idle-ms MS]\n",
               self);
  return 2;
}

// Serves until idle: clients came and none for 5 s, or none within `idle` of the start.
void serve_until_idle(const tenax::StoreServer& server, std::chrono::milliseconds idle) {
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
    } else if ((had && now - busy > std::chrono::seconds(5)) || (!had && now - start > idle)) {
      return;
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  std::string host = "127.0.0.1";
  int port = 0, ready_fd = -1;
  long long idle_ms = -1;
  bool daemon = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--host" && i + 1 < argc) {
      host = argv[++i];
    } else if (a == "--port" && i + 1 < argc) {
      port = std::atoi(argv[++i]);
    } else if (a == "--ready-fd" && i + 1 < argc) {
      ready_fd = std::atoi(argv[++i]);
    } else if (a == "--idle-ms" && i + 1 < argc) {
      idle_ms = std::atoll(argv[++i]);
    } else if (a == "--daemon") {
      daemon = true;
    } else {
      return usage(argv[0]);
    }
  }
  if (daemon) {
    const pid_t child = ::fork();
    if (child < 0) return 1;
    if (child > 0) ::_exit(0);
  }
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  if (idle_ms < 0) pthread_sigmask(SIG_BLOCK, &set, nullptr);  // taken by sigwait below
  int bound = -1;
  try {
    tenax::set_log_options(tenax::LogOptions::from_environment());
    tenax::StoreServer server(host, port, tenax::env_string("TENAX_STORE_TOKEN").value_or(""),
                              tenax::StoreLimits::from_environment());
    bound = server.port();
    if (ready_fd >= 0) {
      (void)!::write(ready_fd, &bound, sizeof bound);
      ::close(ready_fd);
    } else {
      std::printf("tenax-store listening on %s:%d\n", host.c_str(), bound);
      std::fflush(stdout);
    }
    if (idle_ms >= 0) {
      serve_until_idle(server, std::chrono::milliseconds(idle_ms));
    } else {
      int sig = 0;
      sigwait(&set, &sig);
    }
  } catch (const tenax::Error& e) {
    if (ready_fd >= 0 && bound < 0) (void)!::write(ready_fd, &bound, sizeof bound);
    std::fprintf(stderr, "tenax-store: %s\n", e.what());
    return 1;
  }
  return 0;
}
