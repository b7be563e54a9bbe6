#pragma once

// Spawning real processes for multi-rank tests: each child gets extra environment variables and
// writes stdout+stderr to a file the test reads back.

#include <sys/types.h>

#include <chrono>
#include <map>
#include <string>
#include <vector>

namespace tenax::testing {

class Process {
 public:
  // Starts argv[0] with `env` added to this process's environment.
  Process(const std::vector<std::string>& argv, const std::map<std::string, std::string>& env);
  ~Process();
  Process(Process&& other) noexcept;
  Process(const Process&) = delete;

  // Waits up to `timeout`; returns the exit code (128+signal when killed), or -1 on timeout.
  int wait(std::chrono::milliseconds timeout);
  void kill(int sig);
  // Everything the process printed so far.
  std::string output() const;
  pid_t pid() const { return pid_; }
  bool exited() const { return exited_; }
  int exit_code() const { return code_; }

 private:
  pid_t pid_ = -1;
  std::string log_path_;
  bool exited_ = false;
  int code_ = -1;
};

struct RankResult {
  int exit_code;
  std::string output;
};

// Runs `n` ranks of argv with torchrun-style environment against a store hosted by the calling
// process (so killing any rank leaves the store up), unless `env` sets MASTER_PORT (then rank 0
// hosts it) or TENAX_STORE_ADDR. Without OMP_NUM_THREADS (in `env` or this process's
// environment) each rank gets cores / n threads, as under tenaxrun. Kills every rank still running after
// `timeout` (their exit code is then -1). A rank named by `stuck_rank` is not waited for: it is
// killed once the others have exited.
std::vector<RankResult> run_ranks(int n, const std::vector<std::string>& argv,
                                  std::map<std::string, std::string> env = {},
                                  std::chrono::milliseconds timeout = std::chrono::seconds(120),
                                  int stuck_rank = -1);

// Runs one command to completion (or kills it after `timeout`); returns its exit code and
// output.
RankResult run_command(const std::vector<std::string>& argv,
                       const std::map<std::string, std::string>& env = {},
                       std::chrono::milliseconds timeout = std::chrono::seconds(120));

// A TCP port that was free a moment ago (for launchers that need a fixed port).
int free_port();

// The first of `n` consecutive loopback TCP ports that were all free a moment ago, in
// 10000-19999: below the kernel's ephemeral range (ip_local_port_range) and the Slurm launch's
// store ports. For launchers that bind port + k, whose ports must not be handed to another
// process's bind(0) or connect() meanwhile. -1 when there are none.
int free_port_block(int n);

// Prints each rank's output; for failure messages.
std::string dump(const std::vector<RankResult>& results);

}  // namespace tenax::testing
