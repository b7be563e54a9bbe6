#include <chrono>
#include <cstdio>
#include <exception>
#include <string>

#include "comm/mpi_broadcast.h"
#include "tenax/comm/flight_recorder.h"
#include "tenax/comm/init.h"
#include "tenax/core/error.h"
#include "tenax/core/logging.h"
#include "tenax/core/metrics.h"
#include "tenax/store/etcd_store.h"
#include "tenax/store/launch.h"

namespace tenax {
namespace {

// Rank 0 starts the store (a process of its own, before MPI starts its threads); its address
// and a fresh token travel to the others over MPI, once.
void mpi_exchange_store(LaunchInfo& info, std::chrono::milliseconds timeout) {
  const bool local_job = info.local_size == info.size;
  std::string address;
  std::exception_ptr failed;
  if (info.rank == 0) {
    try {
      std::string host = local_job ? "127.0.0.1" : reachable_host_address();
      StoreProcessOptions so;
      so.host = local_job ? "127.0.0.1" : "0.0.0.0";
      so.port = info.store_port;
      so.token = info.token.empty() ? random_store_token() : info.token;
      so.idle = timeout + std::chrono::seconds(60);
      so.who = "mpirun bootstrap";
      const int port = start_store_process(so);
      address = host + " " + std::to_string(port) + " " + so.token;
    } catch (const Error& e) {
      // The others learn of it rather than wait in the broadcast.
      address = std::string("error ") + e.what();
      failed = std::current_exception();
    }
  }
  const std::string buf = detail::mpi_broadcast_from_rank0(address, 512, info.rank);
  if (failed) std::rethrow_exception(failed);
  if (buf.rfind("error ", 0) == 0) {
    throw StoreError("rank " + std::to_string(info.rank) + ": mpirun bootstrap: rank 0 could not "
                     "start the store: " + buf.substr(6));
  }
  char host[256] = {0}, token[128] = {0};
  int port = 0;
  if (std::sscanf(buf.c_str(), "%255s %d %127s", host, &port, token) != 3) {
    throw StoreError("mpirun bootstrap: rank 0 did not send a store address");
  }
  info.store_host = host;
  info.store_port = port;
  info.token = token;
}

// The launch edge: the process-wide facilities the program has not configured itself take the
// environment's options, and the timeout is the caller's, else TENAX_TIMEOUT's.
std::chrono::milliseconds apply_environment(const InitOptions& options) {
  if (!log_options_set()) set_log_options(LogOptions::from_environment());
  if (!flight_recorder_options_set()) {
    set_flight_recorder_options(FlightRecorderOptions::from_environment());
  }
  return options.timeout.count() > 0 ? options.timeout : CommOptions::from_environment().timeout;
}

}  // namespace

World connect(InitOptions options) {
  World w;
  const auto timeout = apply_environment(options);
  w.info = detect_launch();
  LaunchInfo& info = w.info;
  if (info.launcher == "mpirun" && info.store_host.empty() && info.store_address.empty()) {
    mpi_exchange_store(info, timeout);
  } else if (info.launcher == "single") {
    info.token = random_store_token();
    w.store_server =
        std::make_shared<StoreServer>("127.0.0.1", 0, info.token, StoreLimits::from_environment());
    info.store_host = "127.0.0.1";
    info.store_port = w.store_server->port();
  } else if (info.host_store) {
    if (info.token.empty()) {
      log(LogLevel::kWarning, "TENAX_STORE_TOKEN is not set: the store accepts any client that "
                              "knows its address");
    }
    // A process of its own, never this rank's: the job outlives rank 0.
    const bool local_job = info.local_size == info.size;
    StoreProcessOptions so;
    so.host = local_job ? info.store_host : "0.0.0.0";
    so.port = info.store_port;
    so.token = info.token;
    so.idle = timeout + std::chrono::seconds(60);
    so.who = info.launcher + " bootstrap";
    start_store_process(so);
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
  CommOptions copts = CommOptions::from_environment();
  if (options.timeout.count() > 0) copts.timeout = options.timeout;
  copts.name = "world";
  if (info.local_size != info.size) copts.hostname = reachable_host_address();
  w.comm = create_communicator(options.backend, w.store, info.rank, info.size, copts);
  return w;
}

}  // namespace tenax
