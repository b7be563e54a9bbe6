#pragma once

// All-reduce, reduce-scatter and all-gather through one shared-memory segment, for a
// communicator whose ranks are all processes of one host (the Gloo backend uses it for those
// three there). Internal.
//
// The segment holds two sets of n slots of B bytes, and per rank two counters, "arrived" and
// "reduced". All-reduce processes the buffer in chunks of at most B bytes; chunk e uses set
// e % 2:
//  1. rank r copies its chunk into slot r, then publishes arrived[r] = e;
//  2. when every rank has arrived, rank r reduces slice r of the chunk (1/n of it) over the n
//     slots, writes the result into slice r of its own slot and of its output, and publishes
//     reduced[r] = e;
//  3. as each rank j publishes reduced[j] = e, rank r copies slice j of slot j to its output.
// A rank reuses set e % 2 only after every rank arrived at chunk e + 1, by which time every
// rank has finished reading chunk e. No byte crosses a socket: each rank copies its buffer in
// once, reads n slices of 1/n to reduce, and copies n-1 slices out.
//
// Reduce-scatter (each rank's input: n pieces of c elements; rank r's output: the reduction of
// piece r) moves chunks of k = B/n elements of every piece: for chunk e rank r copies element
// range [e·k, e·k + k) of each piece j into part j of slot r and arrives; once all have, it
// reduces part r over the n slots into its output. All-gather (each rank's input c elements;
// the output, the n inputs in rank order) moves chunks of B bytes: rank r copies its chunk
// into slot r and arrives; once all have, it copies each slot's chunk to its place in the
// output. Both publish reduced[r] = e when done with a chunk, so every counter keeps pace, and
// keep the rule above: a set is read only before its readers arrive at the next chunk. A rank
// can thus be an operation ahead of another; each operation's count and signature are kept
// with the set of its first chunk, so the slower rank still compares the right ones.
//
// Waits sleep on the counters (futex) in short slices; between slices they check the
// communicator's fault flag (abort(), a peer reported gone by the store), whether a waited-on
// process still exists, and the timeout.

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "comm/reduce_kernels.h"

namespace tenax {

class Store;

namespace detail {

class ShmCollectives {
 public:
  // Why an operation ended early: cancelled (the communicator broke), timed out or a peer
  // process gone while waiting (`ranks`: those that had not arrived), or rank ranks[0] called
  // it with another count or signature (given).
  struct WaitFailure {
    enum Kind { kCancelled, kTimedOut, kPeerGone, kMismatch } kind;
    std::vector<int> ranks;
    uint64_t count = 0, signature = 0;
  };

  // A collective over `store` (keys under `prefix`): every rank publishes its host identity;
  // when all match, rank 0 creates the segment, the others map it, and rank 0 unlinks its name
  // once all have (so nothing outlives the processes). Returns null when the ranks are not all
  // on this host or any rank passed enabled = false.
  static std::unique_ptr<ShmCollectives> create(Store& store, const std::string& prefix, int rank,
                                                int size, std::chrono::milliseconds timeout,
                                                bool enabled);
  ~ShmCollectives();

  // out = reduction over ranks of `in` (count > 0 elements of elem_size bytes; in may equal
  // out). Every rank calls it in the same order; `signature` (dtype and op) and count are
  // compared across ranks. `cancelled` is polled while waiting. Throws WaitFailure.
  void all_reduce(void* out, const void* in, size_t count, size_t elem_size, ReduceFn fn,
                  uint64_t signature, const std::atomic<bool>& cancelled);
  // `in`: size() pieces of `count` elements; `out` (count elements) = the reduction over ranks
  // of piece rank(). Otherwise as all_reduce.
  void reduce_scatter(void* out, const void* in, size_t count, size_t elem_size, ReduceFn fn,
                      uint64_t signature, const std::atomic<bool>& cancelled);
  // `in`: count elements; `out` (size() × count): every rank's input in rank order.
  void all_gather(void* out, const void* in, size_t count, size_t elem_size, uint64_t signature,
                  const std::atomic<bool>& cancelled);

 private:
  struct RankControl;
  enum class Counter { kArrived, kReduced };
  ShmCollectives(int rank, int size, size_t slot_bytes, void* base, size_t mapped,
                 std::chrono::milliseconds timeout);
  static size_t control_bytes(int size);  // the control records, rounded to whole pages
  std::atomic<uint32_t>& counter(int rank, Counter which) const;
  void wait_all(Counter which, uint32_t epoch, const std::atomic<bool>& cancelled,
                const std::chrono::steady_clock::time_point& deadline);
  char* slot(uint32_t epoch, int r) const;
  // Publishes this rank's arrival at `e` (with count and signature on an operation's first
  // chunk), waits for every rank's, and on the first chunk compares their calls.
  void arrive_all(uint32_t e, bool first, size_t count, uint64_t signature,
                  const std::atomic<bool>& cancelled,
                  const std::chrono::steady_clock::time_point& deadline);
  // The next chunk: copies elements [first, first + m) of `in` into this rank's slot, arrives
  // and waits for all (arrive_all); returns the chunk's epoch.
  uint32_t put_and_arrive(const void* in, size_t first, size_t m, size_t elem_size, size_t count,
                          uint64_t signature, const std::atomic<bool>& cancelled,
                          const std::chrono::steady_clock::time_point& deadline);
  void publish_reduced(uint32_t e);

  int rank_, size_;
  size_t slot_bytes_;
  void* base_;
  size_t mapped_;
  std::chrono::milliseconds timeout_;
  RankControl* ctl_;  // one per rank, at the start of the segment
  char* data_;
  uint32_t epoch_ = 0;  // chunks done so far; the same on every rank
};

}  // namespace detail
}  // namespace tenax
