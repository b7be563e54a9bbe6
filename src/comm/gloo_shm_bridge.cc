// The bridge between a Gloo communicator and the shared-memory collectives (shm_collectives.h):
// set up once, and its failures turned into the communicator's errors and faults.

#include "comm/gloo_state.h"

namespace tenax::detail {

ShmCollectives* shared_memory(GlooState& st) {
  if (!st.shm_tried) {
    st.shm_tried = true;
    st.shm = ShmCollectives::create(*st.store, st.prefix, st.rank, st.size, st.timeout,
                                    st.shared_memory);
  }
  return st.shm.get();
}

namespace {

enum class SegmentOp : uint64_t { kAllReduce, kReduceScatter, kAllGather };

// dtype, reduce op and collective: compared across ranks on an operation's first chunk.
uint64_t signature_of(SegmentOp kind, at::ScalarType dtype, ReduceOp op) {
  return (static_cast<uint64_t>(kind) << 16) | (static_cast<uint64_t>(dtype) << 8) |
         static_cast<uint64_t>(op);
}

std::string call_of(uint64_t count, uint64_t signature) {
  static const char* const kinds[] = {"all_reduce", "reduce_scatter", "all_gather"};
  const uint64_t kind = signature >> 16;
  return call_text(static_cast<int64_t>(count), static_cast<int64_t>((signature >> 8) & 0xff),
                   std::string(kind < 3 ? kinds[kind] : "?") +
                       (kind == 2 ? "" : ", reduce op " + std::to_string(signature & 0xff)));
}

// Runs `op`, one of the segment's collectives on `count` elements, and turns its early ends
// into the communicator's errors and faults.
template <class Op>
void on_segment(GlooState& st, Task& t, const std::vector<int>& ranks, size_t count,
                uint64_t signature, Op&& op) {
  using Failure = ShmCollectives::WaitFailure;
  try {
    op();
    return;
  } catch (Failure w) {
    if (!ranks.empty()) {
      for (int& r : w.ranks) r = ranks[r];
    }
    const std::string where = t.desc + " on communicator '" + st.name + "'";
    FaultRecord f;
    switch (w.kind) {
      case Failure::kCancelled: {
        std::lock_guard<std::mutex> lock(st.mu);
        if (st.fault) std::rethrow_exception(st.fault);
        throw AbortedError(where + " was cancelled");
      }
      case Failure::kMismatch:
        throw ConfigError(
            where + " (rank " + std::to_string(st.rank) + ")" +
            mismatch_text(w.ranks[0], call_of(w.count, w.signature), call_of(count, signature)));
      case Failure::kTimedOut:
        f.kind = FaultRecord::kTimeout;
        f.rank = st.rank;
        f.peers = w.ranks;
        f.message = where + " timed out after " + std::to_string(st.timeout.count()) +
                    " ms waiting on rank(s) " + join_ranks(w.ranks) + " (reported by rank " +
                    std::to_string(st.rank) + ")";
        break;
      case Failure::kPeerGone:
        f.kind = FaultRecord::kLost;
        f.rank = w.ranks[0];
        f.message = where + ": lost rank " + std::to_string(w.ranks[0]) +
                    " (its process is gone; seen by rank " + std::to_string(st.rank) + ")";
        break;
    }
    std::rethrow_exception(st.faults->publish(f).to_exception());
  }
}

}  // namespace

void shm_all_reduce(GlooState& st, Task& t, ShmCollectives& shm, const std::vector<int>& ranks,
                    const at::Tensor& in, at::Tensor& out, ReduceFn fn, ReduceOp op) {
  const auto count = static_cast<size_t>(in.numel());
  const uint64_t signature = signature_of(SegmentOp::kAllReduce, in.scalar_type(), op);
  on_segment(st, t, ranks, count, signature, [&] {
    shm.all_reduce(out.data_ptr(), in.data_ptr(), count, in.element_size(), fn, signature,
                   st.broken);
  });
}

void shm_reduce_scatter(GlooState& st, Task& t, ShmCollectives& shm, const at::Tensor& in,
                        at::Tensor& out, ReduceFn fn, ReduceOp op) {
  const auto count = static_cast<size_t>(out.numel());
  const uint64_t signature = signature_of(SegmentOp::kReduceScatter, in.scalar_type(), op);
  on_segment(st, t, {}, count, signature, [&] {
    shm.reduce_scatter(out.data_ptr(), in.data_ptr(), count, in.element_size(), fn, signature,
                       st.broken);
  });
}

void shm_all_gather(GlooState& st, Task& t, ShmCollectives& shm, const at::Tensor& in,
                    at::Tensor& out) {
  const auto count = static_cast<size_t>(in.numel());
  const uint64_t signature = signature_of(SegmentOp::kAllGather, in.scalar_type(), ReduceOp::kSum);
  on_segment(st, t, {}, count, signature, [&] {
    shm.all_gather(out.data_ptr(), in.data_ptr(), count, in.element_size(), signature, st.broken);
  });
}

}  // namespace tenax::detail
