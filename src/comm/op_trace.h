#pragma once

// What each communicator records of its operations (internal): the flight recorder, a ring of
// its last operations that a rank writes to a file when a collective times out or a peer is
// lost (or on SIGUSR1), and the per-operation metrics (calls, bytes, seconds, errors by type)
// of tenax/core/metrics.h.
//
// Threads: enqueued() runs on the caller's thread, started()/ended() on the backend's worker
// (or, for point-to-point, on the thread that waits); one mutex guards the ring. Metrics are
// recorded with atomic adds only.

#include <c10/core/ScalarType.h>

#include <chrono>
#include <cstdint>
#include <exception>
#include <mutex>
#include <string>
#include <vector>

#include "tenax/core/metrics.h"

namespace tenax::detail {

// The operations a communicator records, in this order.
enum class OpKind {
  kAllReduce,
  kReduceScatter,
  kAllGather,
  kBroadcast,
  kReduce,
  kAllToAll,
  kSend,
  kRecv,
  kBarrier,
  kCount
};
const char* op_name(OpKind op);
// "all_reduce" → kAllReduce; kCount when unknown.
OpKind op_kind(const std::string& name);

// A communicator's name without its generation ("elastic/run/g3/active" → "elastic/run/active"):
// the `group` label, stable across re-formations.
std::string comm_group(const std::string& name);

class OpTrace {
 public:
  // `capacity` operations are kept (0: FlightRecorderOptions::entries, else 2048).
  OpTrace(std::string comm_name, int rank, int size, size_t capacity = 0);
  ~OpTrace();
  OpTrace(const OpTrace&) = delete;
  OpTrace& operator=(const OpTrace&) = delete;

  // An operation was issued: returns its id for started()/ended(). `peer` is the other rank of
  // a point-to-point transfer or a root (-1: every rank).
  uint64_t enqueued(OpKind op, uint64_t seq, c10::ScalarType dtype, int64_t count, int64_t bytes,
                    int peer);
  void started(uint64_t id);
  // Finished (`err` null) or failed: a TimeoutError or PeerLostError also writes this process's
  // records to the flight directory (at most once a second).
  void ended(uint64_t id, const std::exception_ptr& err);
  // An operation refused at its call because the communicator is already broken: counted as a
  // failure of its kind (no flight record; the one that broke it has it).
  void refused(OpKind op, const std::exception_ptr& err);

  // {"name":…,"group":…,"rank":…,"size":…,"entries":[…]} oldest first.
  std::string to_json() const;

 private:
  enum State : uint8_t { kQueued, kRunning, kDone, kFailed };
  struct Entry {
    uint64_t id = 0;  // 0: empty slot
    uint64_t seq = 0;
    OpKind op = OpKind::kCount;
    c10::ScalarType dtype = c10::ScalarType::Undefined;
    int64_t count = 0, bytes = 0;
    int peer = -1;
    int64_t enqueued_us = 0, started_us = 0, ended_us = 0;  // Unix time (µs); 0: not yet
    std::chrono::steady_clock::time_point start;
    State state = kQueued;
    const char* error = "";
  };
  // An operation's series, found on its first use (so an operation never issued has none).
  struct OpMetrics {
    std::once_flag found;
    metrics::Counter* calls = nullptr;
    metrics::Counter* bytes = nullptr;
    metrics::Histogram* seconds = nullptr;
  };
  OpMetrics& metrics_of(OpKind op);
  void count_error(OpKind op, int kind);  // `kind`: an index into the error kinds' names

  const std::string name_, group_;
  const int rank_, size_;
  OpMetrics metrics_[static_cast<int>(OpKind::kCount)];
  mutable std::mutex mu_;
  std::vector<Entry> ring_;  // guarded by mu_; slot = id % size
  uint64_t next_id_ = 1;     // guarded by mu_
};

}  // namespace tenax::detail
