// tenax-store: a standalone store server, for jobs whose store must outlive every rank.
// Usage: tenax-store [--host HOST] [--port PORT]; the token is TENAX_STORE_TOKEN.
// Prints "tenax-store listening on HOST:PORT" once ready, then serves until SIGINT/SIGTERM.

#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <unistd.h>

#include "tenax/comm/store_server.h"
#include "tenax/core/config.h"
#include "tenax/core/error.h"

int main(int argc, char** argv) {
  std::string host = "127.0.0.1";
  int port = 0;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--host" && i + 1 < argc) {
      host = argv[++i];
    } else if (a == "--port" && i + 1 < argc) {
      port = std::atoi(argv[++i]);
    } else {
      std::fprintf(stderr, "usage: %s [--host HOST] [--port PORT]\n", argv[0]);
      return 2;
    }
  }
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  try {
    tenax::StoreServer server(host, port, tenax::env_string("TENAX_STORE_TOKEN").value_or(""));
    std::printf("tenax-store listening on %s:%d\n", host.c_str(), server.port());
    std::fflush(stdout);
    int sig = 0;
    sigwait(&set, &sig);
  } catch (const tenax::Error& e) {
    std::fprintf(stderr, "tenax-store: %s\n", e.what());
    return 1;
  }
  return 0;
}
