#pragma once

// Prevent and detect: what the elastic runner checks before a member trains and while it
// trains (docs/health.md). Options only: plain values, copied by whoever takes them.
//
//   preflight   before joining: host checks (/dev/shm and memory for the memory tier, disk for
//               the directory tier, the durable tier reachable, clock offset) and rank checks
//               against the other starting members (a deterministic GEMM whose checksum is
//               compared with the majority's, an all-reduce of known data checked element by
//               element, a bus-bandwidth floor). A member that fails is kept out, its reasons
//               in the store; a host that fails twice within the quarantine window is
//               quarantined until `tenax-health clear`.
//   stragglers  each rank's compute time per step against the median of the active members,
//               over a window; above the threshold for `straggler_steps` steps: reported, and
//               with the evict policy the job re-forms without it.
//   hangs       each phase (step, save, evaluation, rendezvous, persist) has a deadline of
//               k × p99 of its observed durations (with a floor); a rank with a thread past its
//               phase's deadline outside any wait on others (a collective, a store call, an S3
//               transfer) is stuck: it says what each of its threads is doing, dumps its flight
//               records and leaves, so the others re-form without it.
//   replicas    every N steps the replicas of each part of the state compare a hash of it; a
//               replica that differs from the majority is named and leaves (it rejoins with
//               its state from a peer).

#include <chrono>
#include <cstdint>
#include <string>

#include "tenax/core/export.h"
#include "tenax/core/phase.h"  // Phase, PhaseScope: what the hang watch times

namespace tenax {

enum class StragglerPolicy { kOff, kReport, kEvict };
// What a trainer does with a step whose loss or gradient norm is not finite (or spikes).
enum class NonFinitePolicy { kOff, kSkip, kRollback };

// "off" / "report" / "evict"; "off" / "skip" / "rollback". Throw ConfigError naming `what`
// (the flag) and the value for anything else.
TENAX_API StragglerPolicy parse_straggler_policy(const std::string& value,
                                                 const std::string& what = "straggler policy");
TENAX_API NonFinitePolicy parse_nonfinite_policy(const std::string& value,
                                                 const std::string& what = "nan policy");
TENAX_API std::string to_string(StragglerPolicy p);
TENAX_API std::string to_string(NonFinitePolicy p);

struct TENAX_API PreflightOptions {
  // Run the checks. The ElasticRunner also runs them with TENAX_PREFLIGHT=1 (tenaxrun
  // --preflight sets it).
  bool enabled = false;
  // Members expected to start (0: the launcher's world size); the checks wait for them up to
  // `timeout`, then go on with those that came.
  int expected = 0;
  std::chrono::milliseconds timeout{30000};
  int64_t gemm_size = 256;            // the GEMM is n×n, float32, fixed seed, one thread
  // A CUDA device index (the local rank's): the GEMM runs on that device (cuBLAS) and the
  // collective checks over NCCL with device tensors. -1: on the CPU, over Gloo.
  int cuda_device = -1;
  int64_t allreduce_bytes = 4 << 20;  // the bandwidth probe's buffer
  // Where peers reach this member's check communicator ("": the address it reaches the store
  // from). The ElasticRunner passes its communicators' (ElasticOptions::comm).
  std::string hostname;
  double min_busbw_gbps = 0;          // bus-bandwidth floor (GB/s; 0: none)
  std::chrono::milliseconds max_clock_offset{2000};
  int64_t memory_bytes = 0;  // the memory tier's budget (0: from the checkpoint options)
  std::string directory;     // the directory tier, checked writable with room
  int64_t disk_bytes = 0;    // room needed there
  // Quarantine: a host that fails preflight twice within this window is quarantined.
  std::chrono::seconds quarantine_window{3600};
};

struct TENAX_API HealthOptions {
  PreflightOptions preflight;
  StragglerPolicy straggler = StragglerPolicy::kReport;
  double straggler_threshold = 1.5;  // compute time over the group's median
  int straggler_window = 10;         // steps averaged for the score
  int straggler_steps = 5;           // consecutive steps over the threshold before acting
  int64_t replica_hash_every = 0;    // steps between replica comparisons (0: off)
  bool hang_watchdog = false;        // opt in (llama_train --hang-watchdog)
  double deadline_k = 5;                           // deadline = k × p99 of observed steps
  std::chrono::milliseconds deadline_floor{3000};  // never shorter than this
};

// The exit status of a member a health check kept out (failed preflight) or evicted (a
// straggler): tenaxrun does not restart it.
inline constexpr int kUnhealthyExitCode = 76;
// The exit status of a member a health check removed during training (stuck past its deadline,
// a replica that differs): tenaxrun restarts it, and it takes its state from peers.
inline constexpr int kRemovedExitCode = 77;

}  // namespace tenax
