// How a Gloo communicator names what broke it: a Gloo exception becomes a timeout naming the
// stuck peers or a lost connection naming the dead one, published through the fault channel so
// that every rank throws the same error.

#include <algorithm>

#include "comm/gloo_state.h"

namespace tenax::detail {
namespace {

// How long a rank that saw a broken connection waits for the store to say which peer died.
constexpr Ms kBlameWait{1000};

// A Gloo timeout: find the peers that did not time out with us (they are the stuck ones).
FaultRecord timeout_fault(GlooState& st, const std::string& desc, uint64_t seq) {
  const std::string base = st.prefix + "/timedout/" + std::to_string(seq) + "/";
  std::vector<int> suspects;
  try {
    st.store->set(base + std::to_string(st.rank), "1");
    // Peers that are alive time out at about the same moment; give them a window to say so.
    std::unique_lock<std::mutex> lock(st.mu);
    st.cv.wait_for(lock, std::min<Ms>(st.timeout / 2, Ms(1000)));
    lock.unlock();
    std::vector<bool> reported(st.size, false);
    for (const auto& k : st.store->list(base)) reported[std::stoi(k.substr(base.size()))] = true;
    for (int r = 0; r < st.size; ++r) {
      if (!reported[r] && r != st.rank) suspects.push_back(r);
    }
  } catch (const Error&) {
    for (int r = 0; r < st.size; ++r) {
      if (r != st.rank) suspects.push_back(r);
    }
  }
  FaultRecord f;
  f.kind = FaultRecord::kTimeout;
  f.rank = st.rank;
  f.peers = suspects;
  f.message = desc + " on communicator '" + st.name + "' timed out after " +
              std::to_string(st.timeout.count()) + " ms waiting on rank(s) " +
              (suspects.empty() ? std::string("unknown") : join_ranks(suspects)) +
              " (reported by rank " + std::to_string(st.rank) + ")";
  return st.faults->publish(f);
}

// A broken connection: the store names the dead peer (its store connection dropped too) when
// it learns of deaths soon enough to be worth waiting for (the TCP store: at once; etcd: only
// once a lease expires, seconds later); otherwise match Gloo's message against the peers' pair
// addresses. Either way the first record published is the one every rank throws.
FaultRecord lost_fault(GlooState& st, const std::string& desc, const std::string& what) {
  if (st.store->disconnect_notice() <= kBlameWait) {
    std::unique_lock<std::mutex> lock(st.mu);
    st.cv.wait_for(lock, kBlameWait, [&] { return st.fault != nullptr; });
  }
  if (auto f = st.faults->current()) return *f;
  int peer = -1;
  try {
    for (int j = 0; j < st.size && peer < 0; ++j) {
      if (j == st.rank) continue;
      auto addr = st.store->try_get(st.prefix + "/pairaddr/" + std::to_string(j) + "/" +
                                    std::to_string(st.rank));
      if (addr && what.find(*addr) != std::string::npos) peer = j;
    }
  } catch (const Error&) {
  }
  FaultRecord f;
  f.kind = FaultRecord::kLost;
  f.rank = peer;
  f.message = desc + " on communicator '" + st.name + "': lost " +
              (peer >= 0 ? "rank " + std::to_string(peer) : std::string("a peer")) +
              " (connection failed: " + what + "; seen by rank " + std::to_string(st.rank) + ")";
  return st.faults->publish(f);
}

}  // namespace

std::exception_ptr classify(GlooState& st, const std::string& desc, uint64_t seq,
                            const std::string& what) {
  if (what.find("Timed out") != std::string::npos) {
    return timeout_fault(st, desc, seq).to_exception();
  }
  return lost_fault(st, desc, what).to_exception();
}

}  // namespace tenax::detail
