// The peer tier: the replicator thread sends every committed snapshot to rank
// (rank + peer_offset) % world and receives its source's into a replica slot, on a
// communicator of its own.

#include "checkpoint/engine_impl.h"
#include "checkpoint/engine_metrics.h"
#include "tenax/core/logging.h"

namespace tenax {

// Sends every committed snapshot to the peer and receives the source rank's into a replica
// slot, in commit order (every rank commits the same steps, so the exchanges pair up).
void CheckpointEngine::Impl::replicate_loop() {
  for (;;) {
    std::pair<int, int64_t> job;
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [&] { return stopping_ || !replications_.empty(); });
      if (replications_.empty()) return;
      job = replications_.front();
      replications_.pop_front();
      replicating_ = !peer_broken_;
    }
    if (!peer_broken_) {
      auto& m = detail::checkpoint_metrics();
      try {
        const auto began = std::chrono::steady_clock::now();
        exchange(job.first);
        m.seconds[m.kPeer]->inc(
            std::chrono::duration<double>(std::chrono::steady_clock::now() - began).count());
        m.bytes[m.kPeer]->inc(static_cast<double>(memory_.region(job.first).header()->data_bytes));
      } catch (const std::exception& e) {
        m.failures[m.kPeer]->inc();
        std::lock_guard<std::mutex> lock(mu_);
        peer_broken_ = true;
        last_error_ = "peer replication of step " + std::to_string(job.second) + ": " + e.what();
        log(LogLevel::kWarning, "checkpoint: rank " + std::to_string(comm_->rank()) + ": " +
                                    last_error_ + "; the peer tier is off for this engine");
      }
    }
    std::lock_guard<std::mutex> lock(mu_);
    --pinned_[job.first];
    replicating_ = false;
    cv_.notify_all();
  }
}

void CheckpointEngine::Impl::exchange(int slot) {
  detail::Region& mine = memory_.region(slot);
  const auto* h = mine.header();
  at::Tensor out = at::full({3}, 0, at::kLong), in = at::full({3}, 0, at::kLong);
  out[0] = h->step;
  out[1] = static_cast<int64_t>(h->data_bytes);
  out[2] = static_cast<int64_t>(h->json_bytes);
  auto sent = peer_comm_->send_async(out, peer_dst_, kPeerHeader);
  peer_comm_->recv(in, peer_src_, kPeerHeader);
  sent->wait();
  const int64_t step = in[0].item<int64_t>(), data_bytes = in[1].item<int64_t>(),
                json_bytes = in[2].item<int64_t>();
  // The replica slot to overwrite: the empty or the oldest.
  int rslot = 0;
  for (int s = 1; s < replicas_->slots(); ++s) {
    auto step_of = [&](int k) {
      auto& r = replicas_->region(k);
      return r.capacity() == 0 ? int64_t(-2) : r.header()->step;
    };
    if (step_of(s) < step_of(rslot)) rslot = s;
  }
  replicas_->prepare(rslot, step, static_cast<uint64_t>(data_bytes),
                     static_cast<uint64_t>(json_bytes) + 4096);
  std::string json(static_cast<size_t>(json_bytes), '\0');
  std::vector<WorkHandle> sends;
  if (h->data_bytes > 0) {
    sends.push_back(
        peer_comm_->send_async(byte_view(mine.data(), h->data_bytes), peer_dst_, kPeerData));
  }
  if (h->json_bytes > 0) {
    sends.push_back(
        peer_comm_->send_async(byte_view(mine.json(), h->json_bytes), peer_dst_, kPeerJson));
  }
  if (data_bytes > 0) {
    peer_comm_->recv(byte_view(replicas_->region(rslot).data(), data_bytes), peer_src_, kPeerData);
  }
  if (json_bytes > 0) peer_comm_->recv(byte_view(json.data(), json_bytes), peer_src_, kPeerJson);
  for (auto& w : sends) w->wait();
  replicas_->commit(rslot, json);
}

}  // namespace tenax
