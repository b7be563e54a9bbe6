#pragma once

// Collectives and point-to-point transfers on torch tensors, over Gloo (CPU tensors) or NCCL
// (CUDA tensors). All ranks of a communicator must issue the same collectives in the same order.
//
// Failure contract: when a peer dies, every pending and later operation throws PeerLostError
// naming it; when a peer stops responding, the operation throws TimeoutError after timeout(),
// naming the operation and the peers it waited on. After any such error the communicator is
// broken for good: build a new one (a new store prefix) among the survivors.

#include <ATen/core/Tensor.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "tenax/core/export.h"
#include "tenax/store/store.h"
#include "tenax/core/wait_clock.h"  // communication_wait_time(), communication_waits()

namespace tenax {

enum class Backend { kGloo, kNccl };
enum class ReduceOp { kSum, kAvg, kMin, kMax, kProduct };

// "gloo" / "nccl"; "sum" / "avg" / "min" / "max" / "prod".
TENAX_API std::string to_string(Backend backend);
TENAX_API std::string to_string(ReduceOp op);
// Parses the names above. Throws ConfigError naming the bad value.
TENAX_API Backend parse_backend(const std::string& name);
TENAX_API ReduceOp parse_reduce_op(const std::string& name);

// True iff this build has the NCCL backend and a CUDA device is visible.
TENAX_API bool nccl_available();

// A handle on an operation in flight.
// Thread rules: wait() from one thread at a time (any thread, not only the issuer's: the wait's
// time counts as that thread's communication_wait_time()); is_completed() from any thread. The
// tensors of the operation must stay alive and unchanged until it completes.
class TENAX_API Work {
 public:
  virtual ~Work() = default;
  // Blocks until the operation completes or fails. Throws its error (PeerLostError,
  // TimeoutError, AbortedError, ConfigError...). Throws TimeoutError when it is still running
  // after `timeout`.
  virtual void wait(std::chrono::milliseconds timeout) = 0;
  // Waits with the communicator's timeout.
  virtual void wait() = 0;
  // Returns true iff the operation has finished (successfully or not). Never blocks.
  virtual bool is_completed() = 0;
};
using WorkHandle = std::shared_ptr<Work>;

// A communicator's options. The environment is not read here: CommOptions::from_environment()
// builds them from it (init() does).
struct TENAX_API CommOptions {
  // Bound on every operation (0: kDefaultTimeout, 30 s).
  std::chrono::milliseconds timeout{0};
  // Name used in error messages and as the store prefix (must be unique per communicator).
  std::string name = "world";
  // Address other ranks use to reach this one ("": the address this host reaches the store
  // from, loopback for a local store).
  std::string hostname;
  // Check every collective's shapes and dtypes across ranks before it runs, not only large
  // ones (one extra small exchange per call). Unset: off.
  std::optional<bool> debug_collectives;
  // Gloo: all-reduce through shared memory when every rank is on this host. Unset: on. Ranks
  // that disagree all use sockets.
  std::optional<bool> shared_memory;
  // NCCL: the CUDA device (modulo the devices visible). -1: the launcher's local rank.
  int device = -1;

  // The launch edge: timeout from TENAX_TIMEOUT, hostname from TENAX_HOSTNAME,
  // debug_collectives from TENAX_DEBUG_COLLECTIVES and shared_memory from TENAX_SHM, the rest
  // as above. Throws ConfigError naming a malformed variable. Any thread.
  static CommOptions from_environment();
};

// Thread rules: the operations (the *_async calls, their blocking forms, split) are issued from
// one thread at a time: the order they are issued in is their order on the wire, and every rank
// must issue the same sequence, so a program that issues from several threads orders them
// itself. abort() may be called from any thread at any time, during an operation too. rank(),
// size(), backend(), name() and timeout() never change: any thread. Destroy it on one thread,
// after its works are done or it was aborted; the communicators split from it live on their own.
class TENAX_API Communicator {
 public:
  virtual ~Communicator() = default;

  // This process's rank in [0, size()).
  virtual int rank() const = 0;
  // Number of ranks.
  virtual int size() const = 0;
  virtual Backend backend() const = 0;
  // The name given at creation (unique per communicator).
  virtual const std::string& name() const = 0;
  virtual std::chrono::milliseconds timeout() const = 0;

  // Reduces `tensor` across ranks, in place: every rank ends with the result.
  WorkHandle all_reduce_async(const at::Tensor& tensor, ReduceOp op = ReduceOp::kSum) {
    return all_reduce_async(tensor, tensor, op);
  }
  // Out of place: `output` (same shape and dtype as `input`) receives the result.
  virtual WorkHandle all_reduce_async(const at::Tensor& input, const at::Tensor& output,
                                      ReduceOp op = ReduceOp::kSum) = 0;
  // `input` holds size() equal chunks along its flattened elements; rank r receives the
  // reduction of chunk r into `output`. REQUIRES: input.numel() == size() * output.numel().
  virtual WorkHandle reduce_scatter_async(const at::Tensor& output, const at::Tensor& input,
                                          ReduceOp op = ReduceOp::kSum) = 0;
  // Concatenates every rank's `input` into `output` in rank order.
  // REQUIRES: output.numel() == size() * input.numel(). `input` may be output's own chunk.
  virtual WorkHandle all_gather_async(const at::Tensor& output, const at::Tensor& input) = 0;
  // Copies root's `tensor` into every rank's `tensor`.
  virtual WorkHandle broadcast_async(const at::Tensor& tensor, int root) = 0;
  // Reduces `tensor` across ranks into root's `tensor` (other ranks' tensors are unchanged).
  virtual WorkHandle reduce_async(const at::Tensor& tensor, int root,
                                  ReduceOp op = ReduceOp::kSum) = 0;
  // Rank r sends chunk j of `input` to rank j and receives rank j's chunk r into chunk j of
  // `output`. Equal chunks when the split vectors are empty; otherwise element counts per rank.
  virtual WorkHandle all_to_all_async(const at::Tensor& output, const at::Tensor& input,
                                      const std::vector<int64_t>& output_splits = {},
                                      const std::vector<int64_t>& input_splits = {}) = 0;
  // Point to point. A send matches the recv with the same (peer, tag) on the other side.
  virtual WorkHandle send_async(const at::Tensor& tensor, int dst, uint32_t tag = 0) = 0;
  virtual WorkHandle recv_async(const at::Tensor& tensor, int src, uint32_t tag = 0) = 0;
  // Returns once every rank has entered the barrier.
  virtual WorkHandle barrier_async() = 0;

  // Blocking forms: the async form followed by wait().
  void all_reduce(const at::Tensor& tensor, ReduceOp op = ReduceOp::kSum) {
    all_reduce_async(tensor, op)->wait();
  }
  void all_reduce(const at::Tensor& input, const at::Tensor& output,
                  ReduceOp op = ReduceOp::kSum) {
    all_reduce_async(input, output, op)->wait();
  }
  void reduce_scatter(const at::Tensor& output, const at::Tensor& input,
                      ReduceOp op = ReduceOp::kSum) {
    reduce_scatter_async(output, input, op)->wait();
  }
  void all_gather(const at::Tensor& output, const at::Tensor& input) {
    all_gather_async(output, input)->wait();
  }
  void broadcast(const at::Tensor& tensor, int root) { broadcast_async(tensor, root)->wait(); }
  void reduce(const at::Tensor& tensor, int root, ReduceOp op = ReduceOp::kSum) {
    reduce_async(tensor, root, op)->wait();
  }
  void all_to_all(const at::Tensor& output, const at::Tensor& input,
                  const std::vector<int64_t>& output_splits = {},
                  const std::vector<int64_t>& input_splits = {}) {
    all_to_all_async(output, input, output_splits, input_splits)->wait();
  }
  void send(const at::Tensor& tensor, int dst, uint32_t tag = 0) {
    send_async(tensor, dst, tag)->wait();
  }
  void recv(const at::Tensor& tensor, int src, uint32_t tag = 0) {
    recv_async(tensor, src, tag)->wait();
  }
  void barrier() { barrier_async()->wait(); }

  // Collective over this communicator: ranks passing the same `color` form a new communicator,
  // ordered by (key, rank). A negative color joins none and gets nullptr.
  virtual std::shared_ptr<Communicator> split(int color, int key) = 0;

  // Tears the communicator down from any thread: pending and later operations throw
  // AbortedError (naming `reason`), and peers' operations fail instead of waiting. Every
  // communicator split from this one (and theirs) is aborted too.
  virtual void abort(const std::string& reason = "abort() called") = 0;
};

// Builds a communicator of `size` ranks; every rank calls this with the same options.name and
// a store reachable by all. SIGPIPE stays as the program set it: every socket write of tenax's
// (Gloo's included) passes MSG_NOSIGNAL, so a write to a peer that is gone is an error
// (PeerLostError), not the death of the process. Throws ConfigError for a bad rank/size/backend,
// StoreError or TimeoutError when the others do not show up within the timeout. Any thread.
TENAX_API std::shared_ptr<Communicator> create_communicator(Backend backend,
                                                            std::shared_ptr<Store> store,
                                                            int rank, int size,
                                                            CommOptions options = {});

}  // namespace tenax
