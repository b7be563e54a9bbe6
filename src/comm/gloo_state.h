#pragma once

// What a Gloo communicator shares with its worker thread, its works and its fault watcher, and
// the small helpers its algorithms use (internal).
//
// Threads: the caller's thread enqueues operations and posts sends and receives; one worker
// thread per communicator runs the queued operations in order (gloo_worker.cc); the fault
// channel's watcher thread calls set_fault(). GlooState::mu guards the members marked below;
// the ones marked "worker thread only" are touched by the worker alone.

#include <ATen/core/Tensor.h>
#include <gloo/rendezvous/context.h>
#include <gloo/transport/device.h>
#include <gloo/transport/unbound_buffer.h>

#include <array>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "comm/argument_checks.h"
#include "comm/backend_communicator.h"
#include "comm/fault.h"
#include "comm/gloo_allreduce_cache.h"
#include "comm/op_trace.h"
#include "comm/shm_collectives.h"
#include "tenax/comm/communicator.h"
#include "tenax/core/error.h"
#include "tenax/store/store.h"

namespace tenax::detail {

using Ms = std::chrono::milliseconds;

constexpr uint8_t kReduceScatterSlotPrefix = 0x71;
constexpr uint8_t kP2PSlotPrefix = 0x72;
constexpr uint8_t kDebugCheckSlotPrefix = 0x73;
// Collectives on at least this many bytes always check their arguments across ranks: the
// 32-byte exchange (about 1 ms on 4 ranks of a loaded 2-core host) is a few percent of such an
// operation. Smaller ones check only when TENAX_DEBUG_COLLECTIVES is set.
constexpr int64_t kAlwaysCheckBytes = 16 << 20;
// The ring all-reduce pipelines segments of at most this many bytes (Gloo's default is 1 MiB).
// Larger segments mean fewer wake-ups per byte: on 2 ranks, 16 MiB all-reduces ran at 1.56-1.80
// GB/s with 4 MiB segments against 1.53-1.56 with 1 MiB. Buffers under 2 x ranks x 4 MiB are
// unaffected (a segment is at most 1/(2 x ranks) of the buffer).
constexpr size_t kAllreduceSegmentBytes = 4 << 20;

// The completion of one queued operation. Protected by GlooState::mu.
struct WorkState {
  bool done = false;
  int waiters = 0;  // threads in wait(): completion wakes only a work someone waits on
  std::exception_ptr error;
};

struct Task;

// The hierarchical all-reduce's groups, for a communicator whose ranks are on several hosts
// (gloo_hierarchical.cc). Worker thread only.
struct Hierarchy {
  std::vector<int> local;             // the ranks on this host, ascending; local[0] leads it
  std::unique_ptr<ShmCollectives> shm;  // over `local` (null when the host has one rank)
  std::shared_ptr<gloo::rendezvous::Context> leaders;  // over every host's leader (leaders only)
  AllreduceCache cache;                                // the leaders' ring options
};

// Everything a communicator shares with its worker and watcher threads.
struct TENAX_INTERNAL GlooState : CommIdentity {
  // Set at construction, read-only after (and the identity).
  std::string hostname;
  bool debug_collectives = false;  // check every collective's arguments across ranks
  bool shared_memory = true;       // all-reduce through shared memory when all ranks are local
  std::unique_ptr<FaultChannel> faults;
  std::unique_ptr<OpTrace> trace;  // the flight recorder and metrics (thread-safe itself)
  std::shared_ptr<gloo::transport::Device> device;
  std::shared_ptr<gloo::rendezvous::Context> ctx;

  std::mutex mu;
  std::condition_variable cv;       // the queue and faults
  std::condition_variable done_cv;  // completions of works that have waiters, and faults
  // Protected by mu:
  std::deque<std::shared_ptr<Task>> queue;
  bool stopping = false;
  std::exception_ptr fault;  // set once, when the communicator breaks
  uint64_t next_seq = 0;
  std::vector<gloo::transport::UnboundBuffer*> active;  // cancelled by abort()
  bool running = false;                                 // the worker is inside an operation
  // Every WorkState's members.

  std::atomic<bool> broken{false};  // fault != nullptr, readable without the lock
  // Set by the worker as it returns; outlives the state (a retired worker's list holds it).
  std::shared_ptr<std::atomic<bool>> worker_exited = std::make_shared<std::atomic<bool>>(false);
  int split_count = 0;              // the caller's thread only (split() is a collective)

  // The worker thread only:
  AllreduceCache allreduce_cache;
  // All-reduce through shared memory when every rank is on this host (null otherwise), set up
  // by the first all_reduce.
  std::unique_ptr<ShmCollectives> shm;
  bool shm_tried = false;
  // Across hosts: reduce within each host through shared memory, all-reduce between the hosts'
  // leaders over sockets, then share the result within each host (null: the flat ring).
  std::unique_ptr<Hierarchy> hierarchy;
  bool hierarchy_tried = false;
  struct SignatureCheck {
    std::array<int64_t, 4> mine{};
    std::vector<int64_t> all;
    std::unique_ptr<gloo::transport::UnboundBuffer> send, recv;
  } signature_check;

  std::string who() const {
    return "communicator '" + name + "' (rank " + std::to_string(rank) + " of " +
           std::to_string(size) + ")";
  }

  // Marks the communicator broken with `e` (first fault wins) and wakes every waiter.
  void set_fault(std::exception_ptr e) {
    std::lock_guard<std::mutex> lock(mu);
    if (!fault) fault = e;
    broken = true;
    for (auto* b : active) {
      b->abortWaitRecv();
      b->abortWaitSend();
    }
    cv.notify_all();
    done_cv.notify_all();
  }
};

struct Task {
  uint64_t seq = 0;
  std::string desc;  // "all_reduce #12 (float32[1024])"
  uint64_t trace_id = 0;  // in GlooState::trace
  std::function<void(GlooState&, Task&)> run;
  std::shared_ptr<WorkState> work = std::make_shared<WorkState>();
};

// Registers unbound buffers so abort() can cancel their waits; unregisters on scope exit
// (declare it after the buffers, so it goes first).
class Tracked {
 public:
  Tracked(GlooState& st, std::vector<gloo::transport::UnboundBuffer*> bufs)
      : st_(st), bufs_(std::move(bufs)) {
    std::lock_guard<std::mutex> lock(st_.mu);
    if (st_.fault) std::rethrow_exception(st_.fault);
    st_.active.insert(st_.active.end(), bufs_.begin(), bufs_.end());
  }
  ~Tracked() {
    std::lock_guard<std::mutex> lock(st_.mu);
    for (auto* b : bufs_) st_.active.erase(std::find(st_.active.begin(), st_.active.end(), b));
  }

 private:
  GlooState& st_;
  std::vector<gloo::transport::UnboundBuffer*> bufs_;
};

// Calls f with a value of the C++ storage type of `dtype` (Gloo only needs the element size).
template <class F>
void with_storage_type(c10::ScalarType dtype, F&& f) {
  switch (dtype) {
    case c10::ScalarType::Float:
      f(float{});
      return;
    case c10::ScalarType::Double:
      f(double{});
      return;
    case c10::ScalarType::Int:
      f(int32_t{});
      return;
    case c10::ScalarType::Long:
      f(int64_t{});
      return;
    case c10::ScalarType::Byte:
      f(uint8_t{});
      return;
    case c10::ScalarType::Half:
    case c10::ScalarType::BFloat16:
      f(uint16_t{});
      return;
    default:
      throw ConfigError(std::string("unsupported dtype ") + c10::toString(dtype));
  }
}

// A tensor as the algorithms see it: contiguous. When the user's tensor is not, `work` is a
// contiguous copy and finish() writes the result back.
struct Staged {
  at::Tensor user, work;
  explicit Staged(const at::Tensor& t) : user(t), work(t.is_contiguous() ? t : t.contiguous()) {}
  void finish() {
    if (!work.is_same(user)) user.copy_(work);
  }
  template <class T>
  T* ptr() {
    return static_cast<T*>(work.data_ptr());
  }
  size_t numel() const { return static_cast<size_t>(work.numel()); }
  size_t nbytes() const { return work.numel() * work.element_size(); }
};

inline void divide_for_avg(at::Tensor& t, int size) {
  if (at::isFloatingType(t.scalar_type())) {
    t.div_(size);
  } else {
    t.div_(size, "trunc");
  }
}

// The shared-memory collectives of `st`, set up by the first call (a collective over the store
// that every rank reaches at the same point), so communicators that never all-reduce,
// reduce-scatter or all-gather reserve no shared memory. Null when the ranks are not all on this
// host. Worker thread only (gloo_shm_bridge.cc).
ShmCollectives* shared_memory(GlooState& st);
// All-reduces `in` into `out` through `shm`, whose rank i is the communicator's ranks[i] (all of
// them in order when `ranks` is empty); its early ends become the communicator's faults.
void shm_all_reduce(GlooState& st, Task& t, ShmCollectives& shm, const std::vector<int>& ranks,
                    const at::Tensor& in, at::Tensor& out, ReduceFn fn, ReduceOp op);
// Reduce-scatters `in` (size pieces) into `out`, and all-gathers `in` into `out` (size × in),
// through `shm` over all of the communicator's ranks.
void shm_reduce_scatter(GlooState& st, Task& t, ShmCollectives& shm, const at::Tensor& in,
                        at::Tensor& out, ReduceFn fn, ReduceOp op);
void shm_all_gather(GlooState& st, Task& t, ShmCollectives& shm, const at::Tensor& in,
                    at::Tensor& out);

// Gloo's ring all-reduce of `in` into `out` over `ctx`, its options kept in `cache`.
void ring_all_reduce(GlooState& st, const std::shared_ptr<gloo::rendezvous::Context>& ctx,
                     AllreduceCache& cache, const at::Tensor& in, at::Tensor& out, ReduceFn fn);

// The hierarchy of `st`, set up by the first all_reduce that cannot use shared memory alone (a
// collective): null when every rank is on one host, when every host has one rank, or when
// shared memory is off. Worker thread only (gloo_hierarchical.cc).
Hierarchy* hierarchy(GlooState& st);
// All-reduces `in` into `out` through it: the host's reduction in shared memory, the leaders'
// ring over sockets, the leader's result shared in memory.
void hierarchical_all_reduce(GlooState& st, Task& t, Hierarchy& h, const at::Tensor& in,
                             at::Tensor& out, ReduceFn fn, ReduceOp op);

// Exchanges what each rank passed to operation `t` and throws ConfigError naming the first rank
// that passed something else (gloo_call_check.cc). Worker thread only.
void check_same_call_across_ranks(GlooState& st, const OpContext& c, Task& t,
                                  const CallSignature& sig);

// Runs the queued operations of `st` in order until it stops (the worker thread's body).
void worker_loop(std::shared_ptr<GlooState> st);

// Ends `worker` once `st` is stopping: joins it, after its queued operations on a healthy
// communicator (each ends by the timeout at the latest). A broken communicator's operation still
// inside Gloo cannot be cancelled: its worker is handed to a process-wide list that joins it
// once the operation ends (at Gloo's timeout), so a destructor never waits for that.
void stop_worker(std::thread worker, const std::shared_ptr<GlooState>& st);

// Turns a Gloo exception from operation `desc` (number `seq`) into the communicator's fault,
// published so that every rank throws the same error (gloo_failures.cc).
std::exception_ptr classify(GlooState& st, const std::string& desc, uint64_t seq,
                            const std::string& what);

}  // namespace tenax::detail
