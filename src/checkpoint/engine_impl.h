#pragma once

// The checkpoint engine's implementation, one class in four units (internal):
//   engine.cc            construction, save() and the slots it writes, the commit thread;
//   engine_replicate.cc  the peer tier: the replication thread;
//   engine_persist.cc    the durable tier: the persistence thread;
//   engine_restore.cc    restore(), on the caller's thread.
//
// Threads: the caller's (save, wait, status, restore), the committer (checksums and commits a
// saved slot), the replicator (exchanges committed slots with the peer ranks) and the persister
// (copies a committed slot out and uploads it). Each member below says who may touch it: set at
// construction and read-only after, guarded by mu_, or owned by one thread.

#include <ATen/ops/empty.h>
#include <ATen/ops/full.h>

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "checkpoint/aligned_buffer.h"
#include "checkpoint/durable_layout.h"
#include "checkpoint/memory_tier.h"
#include "checkpoint/object_store.h"
#include "checkpoint/snapshot.h"
#include "tenax/checkpoint/engine.h"

namespace tenax {

using detail::byte_view;
using detail::fill_tensor;
using detail::Layout;
using detail::rank_file;
using detail::step_dir;
using Ms = std::chrono::milliseconds;

class TENAX_INTERNAL CheckpointEngine::Impl {
 public:
  struct Job {
    int slot;
    int64_t step;
    Layout layout;
    bool persist;
    bool replicate = true;
  };

  Impl(CheckpointOptions o, std::shared_ptr<Communicator> comm, std::shared_ptr<Store> store);
  ~Impl();

  // --- the caller's thread (engine.cc, engine_restore.cc) ---
  void save(int64_t step, const StateDict& state, bool persist_now);
  void wait(Ms timeout);
  CheckpointStatus status() const;
  std::optional<RestoreResult> restore(StateDict& state);

 private:
  // --- slots and commit (engine.cc) ---
  // The slot to write next: one neither pinned by persistence nor being written, preferring
  // the empty, then the oldest. Caller holds mu_.
  int free_slot();
  int pick_slot();
  // The committer thread's body.
  void commit_loop();

  // --- the peer tier (engine_replicate.cc; the placement in engine.cc) ---
  // The shift of peer replicas: the explicit peer_offset, else one that puts every replica on
  // another host (a collective: gathers the hosts), else the ranks per host.
  int replica_offset();
  // The replicator thread's body.
  // Sends every committed snapshot to the peer and receives the source rank's into a replica
  // slot, in commit order (every rank commits the same steps, so the exchanges pair up).
  void replicate_loop();
  void exchange(int slot);

  // --- the durable tier (engine_persist.cc) ---
  // The persister thread's body.
  void persist_loop();
  // A rank's share of a persisted step, out of its slot: objects of about part_bytes each and
  // the records of the parts and blobs in them.
  struct Upload {
    int64_t step;
    std::map<std::string, int64_t> ints;
    std::vector<std::pair<std::string, detail::AlignedBuffer>> objects;  // name, bytes
    nlohmann::json shards = nlohmann::json::array(), blobs = nlohmann::json::array();
  };
  // Copies this rank's parts out of the slot (each part is taken by the first rank to claim
  // it, so replicated parts are stored once) and releases the slot. The object buffers of the
  // previous persist are reused: their pages are already touched (copying into fresh pages
  // costs several times the copy itself).
  Upload copy_out(const Job& job);
  // Keeps an upload's object buffers (and their touched pages) for the next copy_out.
  void recycle(Upload& up);
  // Uploads the objects and, when this rank is the last to finish, writes the manifest that
  // commits the step; then applies retention.
  void persist(const Upload& up);
  std::vector<int64_t> durable_steps() { return detail::durable_steps(*durable_, o_.run); }
  void apply_retention();

  // --- restore (engine_restore.cc): the caller's thread, collective over comm_ ---
  // Collective: the ranks whose `ok` is false, the same list on every rank.
  std::vector<int> failed_ranks(bool ok);
  // "\n  <what> is not intact on rank(s) 1, 3": so that a rank whose own parts were fine
  // still says why the step was not restored.
  static std::string not_intact(const std::string& what, const std::vector<int>& ranks);
  void restore_extras(StateDict& state, const std::map<std::string, int64_t>& ints,
                      const std::map<std::string, std::string>& blobs);
  // The blobs of a verified snapshot, by name.
  static std::map<std::string, std::string> blobs_of(const Layout& layout, const char* data);
  using Snapshots = std::map<int64_t, std::pair<int, Layout>>;  // step -> (slot, layout)
  // Committed snapshots of a memory tier (own or replica) usable for this restore, by step.
  // `rank`: the rank that saved them (this one, or the peer source for replicas).
  Snapshots usable_snapshots(detail::MemoryTier& tier, int rank, const StateDict* state,
                             std::string& errors);
  // A rank's source of a memory-tier restore: its own slot, or a replica received from its peer.
  struct MemorySource {
    Layout layout;
    const char* data = nullptr;
    std::vector<char> received;
  };
  std::vector<int64_t> gather_memory_steps(const Snapshots& own, const Snapshots& held);
  std::vector<WorkHandle> send_replica(int64_t step, const Snapshots& held);
  bool read_memory_source(int64_t step, bool from_peer, const Snapshots& own,
                          const StateDict& state, MemorySource& src, std::string& errors);
  // Memory and peer tiers: the newest step that every rank holds itself or that its peer
  // holds a replica of. Ranks without their own copy receive the replica from the peer.
  std::optional<RestoreResult> restore_memory(StateDict& state, std::string& errors);
  // A durable step read and verified, not yet written into the tensors.
  struct Staged {
    std::vector<std::string> tensors;  // each target tensor's bytes, in state order
    std::map<std::string, int64_t> ints;
    std::map<std::string, std::string> blobs;
    RestoreResult result;
  };
  std::string read_resharded(const std::string& dir, const std::vector<detail::ShardRecord>& saved,
                             const TensorShard& target, int64_t& bytes);
  void load_durable_extras(const nlohmann::json& manifest, const std::string& dir,
                           int saved_world, Staged& out);
  // Reads every part of the durable step `step` that `state` needs and assembles the target
  // tensors' bytes in `out` (empty on entry), writing nothing into `state`; false (with `errors`
  // saying why) when a part is missing or corrupt.
  bool load_durable(int64_t step, const StateDict& state, std::string& errors, Staged& out);
  std::optional<RestoreResult> restore_durable(StateDict& state, std::string& errors);

  static constexpr uint32_t kPeerHeader = 1, kPeerData = 2, kPeerJson = 3;
  static constexpr uint32_t kRestoreHeader = 0x7e01, kRestoreData = 0x7e02, kRestoreJson = 0x7e03;

  // Set at construction, read-only after.
  CheckpointOptions o_;
  std::shared_ptr<Communicator> comm_;  // training's: restore() and the engine-id broadcast
  std::shared_ptr<Store> store_;
  std::string member_;
  // The slots. A region's bytes are written by the thread that holds the slot (save() while
  // busy_, then the committer); the persister and the replicator read it while they pin it;
  // restore() reads committed slots after waiting for the commits.
  detail::MemoryTier memory_;
  std::unique_ptr<detail::ObjectStore> durable_;  // null without a durable tier
  std::string prefix_;                            // store keys of this engine instance
  int peer_offset_ = 1, peer_dst_ = 0, peer_src_ = 0;
  // The peer tier (null when off): a communicator of its own, so replication never queues
  // behind training's collectives, used by the replicator only; the peer source's snapshots,
  // written by the replicator, read by restore() after waiting for the replications.
  std::shared_ptr<Communicator> peer_comm_;
  std::unique_ptr<detail::MemoryTier> replicas_;

  mutable std::mutex mu_;
  std::condition_variable cv_;  // every change below
  // Protected by mu_:
  std::vector<int> pinned_;  // holds on each slot: a pending or copying persist, a replication
  std::vector<bool> busy_;   // being written by save() or being committed
  std::deque<Job> commits_;  // saved, waiting for the committer
  std::optional<Job> persist_next_;  // committed, waiting for the persister (the newest only)
  std::deque<std::pair<int, int64_t>> replications_;  // (slot, step) to send
  bool committing_ = false, persisting_ = false, replicating_ = false, stopping_ = false;
  bool committing_persist_ = false;  // the commit in progress is of a step due for persistence
  bool peer_broken_ = false;         // a replication failed: the peer tier is off
  int64_t last_saved_ = -1, last_committed_ = -1, last_persisted_ = -1, pending_persist_ = -1;
  int64_t saves_ = 0;
  std::string last_error_;

  // The persister thread only.
  std::shared_ptr<Store> persist_store_;    // its own connection
  std::map<std::string, std::string> owners_;  // which rank stores each replicated part
  std::vector<detail::AlignedBuffer> spare_;   // buffers for the next copy_out

  std::thread committer_, replicator_, persister_;  // started last, joined by ~Impl
};

}  // namespace tenax
