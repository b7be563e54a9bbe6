#pragma once

// Observability of a training process: its metrics served to Prometheus, the process and goodput
// series, and the training series a trainer reports each step.
//
//   tenax::observe::Observability obs;   // before training: fails fast when the port is taken
//   ... each step: tenax::observe::record_step({...});
//
// Endpoint: GET /metrics in the text exposition format 0.0.4 on TENAX_METRICS_ADDR
// (127.0.0.1 unless told otherwise) and port TENAX_METRICS_PORT + local rank; none when
// TENAX_METRICS_PORT is unset. Every series carries the constant labels job (TENAX_JOB, else
// "tenax"), host, and those the layers set (member, rank, generation, and the trainer's dp/tp/pp
// coordinates).

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "tenax/core/export.h"

namespace tenax::observe {

// Serves GET /metrics (and GET / with a pointer to it) with cpp-httplib on a thread of its own.
// Thread rules: built and destroyed on one thread; `render` runs on the server's threads, two
// requests possibly at once, so it must be safe to call concurrently (the registry's is).
// port() any thread.
class TENAX_API MetricsServer {
 public:
  // Binds `address`:`port` (0: an ephemeral port) and starts serving what `render` returns
  // (default: the process's metrics registry). Throws ConfigError naming the address and port
  // when it cannot bind (`what` says where the port came from, e.g. "TENAX_METRICS_PORT 9400 +
  // local rank 1").
  MetricsServer(const std::string& address, int port, std::function<std::string()> render = {},
                const std::string& what = "");
  // Stops serving and joins the thread.
  ~MetricsServer();
  MetricsServer(const MetricsServer&) = delete;
  MetricsServer& operator=(const MetricsServer&) = delete;

  int port() const { return port_; }

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  int port_ = 0;
};

struct TENAX_API ObserveOptions {
  // The port to serve /metrics on (0: an ephemeral one, logged); -1: no endpoint.
  int port = -1;
  std::string address = "127.0.0.1";  // the address to bind
  std::string job;                     // the `job` label ("": "tenax")
  // Where the port came from, for the error when it cannot be served ("": "port N").
  std::string port_source;

  // The launch edge: port TENAX_METRICS_PORT + `local_rank` (-1: the launcher's local rank;
  // TENAX_METRICS_PORT=0: an ephemeral port; unset: no endpoint), address TENAX_METRICS_ADDR,
  // job TENAX_JOB. Throws ConfigError when TENAX_METRICS_PORT is not a port.
  static ObserveOptions from_environment(int local_rank = -1);
};

// Turns observability on for this process: constant labels job and host, the process series
// (CPU, resident memory, threads, open files, /dev/shm bytes mapped), the goodput ratio, and the
// endpoint when a port is configured. One per process; destroy it to stop serving.
// Thread rules: built and destroyed on one thread, one per process. Its process series are
// collected when the registry renders (on the endpoint's threads, reading /proc); port() any
// thread.
class TENAX_API Observability {
 public:
  // Throws ConfigError (naming the port) when the endpoint cannot be served: nothing is left
  // half set up, and training should not start.
  explicit Observability(ObserveOptions options = {});
  ~Observability();
  Observability(const Observability&) = delete;
  Observability& operator=(const Observability&) = delete;

  // The port served (-1: none).
  int port() const;

 private:
  std::unique_ptr<MetricsServer> server_;
  int collector_ = -1;
};

// One training step as the trainer saw it (all of them, on every rank).
struct TENAX_API StepSample {
  int64_t step = 0;  // steps completed
  double loss = 0, learning_rate = 0, grad_norm = 0;
  int64_t tokens = 0;          // tokens the step trained on (the whole job's)
  double seconds = 0;          // the step's wall time
  double comm_seconds = 0;     // of which blocked in communication
  double ckpt_seconds = 0;     // of which blocked saving a checkpoint
  double flops_per_token = 0;  // model FLOPs per token (6·N plus attention), for MFU
  double peak_flops = 0;       // the job's peak FLOP/s (all ranks), for MFU; 0: no MFU
};

// Records the training series: step, loss, learning rate, grad norm, tokens and tokens/s, MFU,
// and the step time split into compute, communication and checkpoint stall.
// Any thread (the registry's atomic recordings); steps recorded from two threads interleave.
TENAX_API void record_step(const StepSample& s);

// Sets a constant label on every series (e.g. "dp", "tp", "pp" coordinates); "" removes it.
TENAX_API void set_label(const std::string& name, const std::string& value);

}  // namespace tenax::observe
