#pragma once

// Who this process is, from the launcher's environment (see tenax/comm/init.h for the
// launchers), and the store process a rank starts for the job. The store layer: no LibTorch.

#include <chrono>
#include <string>

#include "tenax/core/export.h"

namespace tenax {

// Who this process is, read from the environment alone (no connections made).
struct TENAX_API LaunchInfo {
  std::string launcher;  // "tenaxrun", "torchrun", "mpirun", "slurm" or "single"
  int rank = 0;
  int size = 1;
  int local_rank = 0;
  int local_size = 1;
  std::string store_host;  // empty under mpirun and single (decided at init)
  int store_port = 0;
  std::string store_address;  // "etcd://…" when the store is etcd (then host/port are unused)
  bool host_store = false;  // true iff this process must start the store (rank 0, torchrun/slurm)
  std::string token;
  // This worker's id in an elastic job, stable across its restarts: TENAX_MEMBER_ID, else
  // "w<rank>".
  std::string member;
};

// Reads the environment. Throws ConfigError naming the variable for a world size < 1, a rank
// outside [0, size), or a malformed value.
TENAX_API LaunchInfo detect_launch();

// detect_launch() of this process, read on the first call and returned unchanged after (a call
// that throws is tried again by the next one). The layers take their launch defaults from it.
TENAX_API const LaunchInfo& launch_info();

// An address of this host that other hosts can reach: TENAX_HOSTNAME if set, else the first
// non-loopback IPv4 address of the host name, else 127.0.0.1. Any thread.
TENAX_API std::string reachable_host_address();

// A fresh random token for a store (32 hex digits). Any thread.
TENAX_API std::string random_store_token();

// A store server in a process of its own: the tenax-store program, executed (posix_spawn, never
// a fork of this possibly threaded process), in its own session with stdio on /dev/null, so it
// outlives the rank that started it. It leaves once it has had clients and none for 5 s (the
// job is over), or when nobody came within `idle` of its start.
struct TENAX_API StoreProcessOptions {
  std::string host = "127.0.0.1";  // the address it listens on
  int port = 0;                    // 0: any free port
  std::string token;               // clients must present it ("" : any client)
  std::chrono::milliseconds idle{std::chrono::minutes(2)};
  // The tenax-store program. "": TENAX_STORE_BIN, else next to libtenax (its directory and
  // ../bin), else where this build put it, else the PATH.
  std::string program;
  std::string who = "bootstrap";  // for error messages (e.g. "mpirun bootstrap")
};

// Starts it and returns the port it listens on, once it listens. Throws ConfigError when the
// program cannot be found (naming where it looked and TENAX_STORE_BIN), StoreError when it
// cannot listen (naming host:port) or does not say so within 10 s. Any thread.
TENAX_API int start_store_process(const StoreProcessOptions& options);

// Where start_store_process finds tenax-store for `program` (as above); "" when nowhere.
TENAX_API std::string find_store_program(const std::string& program = "");

}  // namespace tenax
