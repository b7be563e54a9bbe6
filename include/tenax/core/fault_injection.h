#pragma once

// Built-in faults for tests and demos, off unless configured. A spec is a comma-separated list
// of faults, each optionally limited to one rank:
//   kill@S[:rank=R]    SIGKILL this process when step S begins (the process vanishes, as a
//                      crashed host's would)
//   hang@S[:rank=R]    SIGSTOP this process when step S begins (alive but silent, as a hung
//                      host is)
//   exit@S[:rank=R]    leave with status 1 when step S begins (a clean but unexpected exit)
//   kill@recovery[:rank=R] (also hang@, exit@) the same when this rank takes part in an elastic
//                      re-formation (after the rendezvous, before its state is restored)
//   slow=MS[:rank=R]   sleep MS milliseconds at the start of every step (a straggler)
//   s3_fail=N          the next N uploads (PUTs) to S3 fail as HTTP 503 SlowDown (a failing
//                      endpoint)
//   hang_backward@S[:rank=R]  the training thread stops inside the backward pass of step S
//                      (a stuck kernel: the process and its heartbeats stay alive)
//   nan@S[:rank=R]     the loss of step S is NaN (its gradients too)
//   sdc[:rank=R]       silent data corruption in the preflight GEMM (one value flipped)
//   sdc@S[:rank=R]     silent data corruption of a parameter after step S's update
//   shm_full[:rank=R]  the preflight sees /dev/shm with no room
// e.g. TENAX_FAULT="kill@20:rank=2" or "slow=50:rank=1,s3_fail=5". Killing the rank that hosts
// the store also takes the store down.

#include <cstdint>
#include <string>
#include <vector>

#include "tenax/core/export.h"

namespace tenax {

// Thread rules: immutable once built: its const calls may come from any thread (the training
// thread's step faults, the checkpoint engine's upload fault).
class TENAX_API FaultInjector {
 public:
  enum class Kind { kKill, kHang, kExit, kSlow, kS3Fail, kSdc, kNan, kHangBackward, kShmFull };
  struct Fault {
    Kind kind = Kind::kKill;
    int64_t value = 0;  // the step (-1: at recovery, -2: any), or the milliseconds, or a count
    int rank = -1;      // -1: every rank
  };

  // Parses `spec` for the process of rank `rank`. Throws ConfigError naming the bad item.
  FaultInjector(const std::string& spec, int rank);
  // From TENAX_FAULT (empty: no faults; also empty in a worker its agent restarted, i.e. with
  // TENAX_RESTART_COUNT > 0, so the restarted worker does not repeat its predecessor's fault).
  static FaultInjector from_env(int rank);

  // Call at the start of every training step; does what the spec says for this rank and step
  // (and logs it first, on stderr, so a test can see which fault fired).
  void at_step(int64_t step) const;
  // Call when a re-formation begins (ElasticRunner does): fires the @recovery faults.
  void at_recovery() const;

  // The PUTs the S3 tier answers itself with 503 SlowDown (s3_fail=N; 0 when none). The S3
  // tier takes it from its options (S3Options::injected_failures).
  int64_t s3_failures() const;

  // sdc (no step): the preflight GEMM should come out wrong on this rank.
  bool sdc_in_gemm() const;
  // sdc@S: corrupt a parameter after step S's update.
  bool corrupt_at(int64_t step) const;
  // nan@S: the loss of step S is NaN.
  bool nan_at(int64_t step) const;
  // shm_full: the preflight should see no room in /dev/shm.
  bool shm_full() const;
  // Call inside the backward pass of step S: hang_backward@S stops the calling thread there.
  void in_backward(int64_t step) const;

  bool empty() const { return faults_.empty(); }
  const std::vector<Fault>& faults() const { return faults_; }

 private:
  static constexpr int64_t kAtRecovery = -1;  // Fault::value of the @recovery faults
  static constexpr int64_t kAnyStep = -2;     // Fault::value of the faults written without @
  bool has(Kind kind, int64_t value) const;
  void fire(const Fault& f, const std::string& when) const;

  int rank_;
  std::vector<Fault> faults_;
};

}  // namespace tenax
