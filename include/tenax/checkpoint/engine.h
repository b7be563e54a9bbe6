#pragma once

// The tiered checkpoint engine. save() returns once the state is copied into a host-memory
// slot; checksums, commit and persistence run in background threads. Tiers:
//   memory   POSIX shared memory, one region per (run, rank, slot): survives the process, so
//            a restarted process on the same host restores without I/O;
//   peer     each snapshot copied over the network into another rank's memory (on another
//            host where there is one), so losing a host loses nothing;
//   durable  a directory or S3, every persist_every-th save, committed by a manifest written
//            last: a step without a manifest does not exist for readers.
// restore() takes the newest step complete in a tier (memory first), verifies every checksum,
// falls back to the next tier (or an older durable step) when something is missing or corrupt,
// and reshards when the saved parts differ from the ones asked for.

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "tenax/checkpoint/state.h"
#include "tenax/comm/communicator.h"
#include "tenax/core/export.h"
#include "tenax/store/store.h"

namespace tenax {

// The S3 client's options. The environment is not read here: S3Options::from_environment()
// fills what is empty from it, as the AWS CLI would (the ElasticRunner, llama_train and
// tenax-ckpt do).
struct TENAX_API S3Options {
  // http(s)://host:port of an S3-compatible endpoint; empty: https://s3.<region>.amazonaws.com.
  std::string endpoint;
  // Empty: us-east-1.
  std::string region;
  // Required for an s3:// durable tier (a CheckpointError says so when missing).
  std::string access_key, secret_key, session_token;
  // A rank's parts go into objects of about part_bytes each, parallel_parts uploads in
  // flight; an object above part_bytes (one large part) is a multipart upload of part_bytes
  // parts, parallel_parts in flight. The directory tier uses the same grouping.
  int64_t part_bytes = 32 << 20;
  int parallel_parts = 4;
  int max_attempts = 6;           // per request, on 5xx, 429/503 throttling, connection errors
  std::chrono::milliseconds backoff{200};  // first retry delay, doubled each time (with jitter)
  std::chrono::seconds request_timeout{120};
  // For tests: the first N PUTs are answered 503 SlowDown by the client itself, as a throttling
  // endpoint would. -1: none (from_environment: TENAX_FAULT's s3_fail=N for the launcher's rank).
  int64_t injected_failures = -1;

  // The launch edge: `base` with each empty field taken from the environment: endpoint from
  // AWS_ENDPOINT_URL_S3, else AWS_ENDPOINT_URL; region from AWS_REGION, else
  // AWS_DEFAULT_REGION; credentials from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY
  // (/ AWS_SESSION_TOKEN), else the [AWS_PROFILE or default] section of ~/.aws/credentials
  // (AWS_SHARED_CREDENTIALS_FILE); injected_failures (when -1) from TENAX_FAULT. Any thread.
  static S3Options from_environment(S3Options base);
  static S3Options from_environment();  // from_environment(S3Options{})
};

struct TENAX_API CheckpointOptions {
  std::string run = "tenax";   // names the shared-memory regions and the durable prefix
  // This rank's stable name in the memory tier ("" : "r<rank>"). Elastic training passes the
  // rendezvous id, so a member keeps its regions when a re-formation renumbers the ranks.
  std::string member;
  // Tags every snapshot; restore_from_group never mixes parts saved by different generations
  // of the worker set at one step.
  int64_t generation = 0;
  int memory_slots = 2;         // snapshots kept in memory per rank (older slots are reused)
  // Peer tier: every snapshot is also copied into the memory of rank (rank + peer_offset) % world,
  // so a rank whose host (and memory) is lost restores from its peer. peer_offset 0: the
  // launcher's ranks per host, launch_info().local_size (the same local rank on the next host).
  bool peer = true;
  int peer_offset = 0;
  // Replicate every Nth save (the first always): fewer bytes on the network, but a rank whose
  // memory is lost comes back from an older step.
  int replicate_every = 1;
  // Bound on one rank's slots (0: none). Outside it: with a durable tier, persistence keeps one
  // more copy of the rank's own parts (its upload buffers, reused from persist to persist).
  int64_t memory_budget_bytes = 0;
  std::string durable;          // "" (none), a directory, file:///dir or s3://bucket/prefix
  int persist_every = 10;       // persist every Nth save to the durable tier
  int keep_durable = 3;         // committed steps kept in the durable tier
  std::chrono::milliseconds timeout{0};  // bound on save's wait for a free slot (0: 30 s)
  S3Options s3;

  // The launch edge: the defaults with timeout from TENAX_TIMEOUT and s3 from
  // S3Options::from_environment(). Any thread.
  static CheckpointOptions from_environment();
};

// Where restore() found the step.
struct TENAX_API RestoreResult {
  int64_t step = -1;
  std::string tier;      // "memory", "peer" (this rank's replica on its peer) or "durable"
  int64_t bytes = 0;     // bytes read by this rank
  bool resharded = false;
};

struct TENAX_API CheckpointStatus {
  int64_t last_saved = -1;      // newest step in this rank's memory tier
  int64_t last_persisted = -1;  // newest step this rank finished writing to the durable tier
  int64_t pending_persist = -1; // step being persisted (or retried), -1 when none
  std::string last_error;       // the latest background failure, empty when none
};

// Thread rules: one owner thread (the training thread) calls save(), wait(), restore() and the
// destructor, in the same order on every rank of `comm` where they are collectives. The
// engine's own threads (commit, replication, persistence) touch only what save() copied, so the
// caller's tensors are free again once save() returns. status() may be called from any thread.
// The static functions need no engine: restore_from_group is a collective over `comm` (one
// thread per member), remove_memory and check_durable any thread.
class TENAX_API CheckpointEngine {
 public:
  // Collective over `comm` (its ranks save and restore together); `store` carries the
  // durable-tier commit protocol. Checks the durable tier now (a missing bucket, wrong
  // credentials or an unwritable directory is a CheckpointError here, not an hour later).
  CheckpointEngine(CheckpointOptions options, std::shared_ptr<Communicator> comm,
                   std::shared_ptr<Store> store);
  ~CheckpointEngine();  // waits for the memory commit of every save; abandons persistence
  CheckpointEngine(const CheckpointEngine&) = delete;
  CheckpointEngine& operator=(const CheckpointEngine&) = delete;

  // Copies `state` into a memory slot and returns; the rest happens in the background.
  // Waits (up to the timeout) when every slot is held by a persist in progress. Throws
  // CheckpointError when the slots would exceed the memory budget, or ConfigError for steps
  // that do not increase. `persist_now`: persist this step to the durable tier whatever
  // persist_every says (a preempted job's last step; wait() then returns once it is there).
  void save(int64_t step, const StateDict& state, bool persist_now = false);

  // Blocks until every save so far is committed in memory, replicated to the peer and, when
  // persisted, in the durable tier (or its persistence failed: see status()). Bounded by `timeout`.
  void wait(std::chrono::milliseconds timeout = std::chrono::minutes(10));

  // Collective. Waits (up to the engine's timeout) for this engine's saves to be committed and
  // replicated, then fills the tensors of `state` in place (and its ints and blobs) from the
  // newest complete step; nullopt when no tier holds one. Throws CheckpointError when steps exist but
  // none can be read. Every rank verifies a step's checksums before any rank writes into its
  // tensors, so a step that fails anywhere, and a restore that throws, leave `state` as it was.
  std::optional<RestoreResult> restore(StateDict& state);

  CheckpointStatus status() const;

  // Collective over `comm`, whose members may be any mix of the ranks that saved (under
  // `options.member` names, in any earlier world or mesh) and newcomers. Every member offers
  // the committed snapshots in its memory (its own and the replicas it holds); `state` says
  // what this member needs (empty for one that needs nothing). Picks the newest step (and
  // generation) whose every requested part some member holds, copies local parts in place and
  // sends the others point to point, verifies every checksum and reshards by part offsets.
  // nullopt when no such step exists, or when a part fails its checksum on some member (the
  // error is logged, naming the part; `state` is then untouched on every member); the caller
  // then falls back to the durable tier.
  static std::optional<RestoreResult> restore_from_group(const CheckpointOptions& options,
                                                         Communicator& comm, StateDict& state);

  // Removes this run's shared-memory regions on this host.
  static void remove_memory(const std::string& run);

  // Whether `options.durable` can be used from here (a directory writable, a bucket reachable
  // with these credentials): "" when it can (or there is none), else what is wrong.
  static std::string check_durable(const CheckpointOptions& options);

  class Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace tenax
