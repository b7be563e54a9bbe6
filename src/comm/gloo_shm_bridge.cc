// The bridge between a Gloo communicator and the shared-memory all-reduce (shm_allreduce.h):
// set up once, and its failures turned into the communicator's errors and faults.

#include "comm/gloo_state.h"

namespace tenax::detail {

ShmAllReduce* shared_memory(GlooState& st) {
  if (!st.shm_tried) {
    st.shm_tried = true;
    st.shm =
        ShmAllReduce::create(*st.store, st.prefix, st.rank, st.size, st.timeout, st.shared_memory);
  }
  return st.shm.get();
}

void shm_all_reduce(GlooState& st, Task& t, ShmAllReduce& shm, const std::vector<int>& ranks,
                    const at::Tensor& in, at::Tensor& out, ReduceFn fn, ReduceOp op) {
  const uint64_t signature =
      (static_cast<uint64_t>(in.scalar_type()) << 8) | static_cast<uint64_t>(op);
  using Failure = ShmAllReduce::WaitFailure;
  try {
    shm.all_reduce(out.data_ptr(), in.data_ptr(), static_cast<size_t>(in.numel()),
                   in.element_size(), fn, signature, st.broken);
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
      case Failure::kMismatch: {
        auto text = [](uint64_t count, uint64_t sig) {
          return call_text(static_cast<int64_t>(count), static_cast<int64_t>(sig >> 8),
                           "reduce op " + std::to_string(sig & 0xff));
        };
        throw ConfigError(
            where + " (rank " + std::to_string(st.rank) + ")" +
            mismatch_text(w.ranks[0], text(w.count, w.signature), text(in.numel(), signature)));
      }
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

}  // namespace tenax::detail
