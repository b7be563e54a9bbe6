#pragma once

// The preflight: health checks a member runs before it joins an elastic job (health.h says
// which). ElasticRunner runs it when PreflightOptions::enabled or TENAX_PREFLIGHT is set;
// `tenax-health check` runs the host and GEMM checks on their own.
// Thread rules: every function may run on any thread; run_preflight blocks on the store while
// the other starting members arrive (bounded by PreflightOptions' timeouts), once per member.

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "tenax/core/export.h"
#include "tenax/core/fault_injection.h"
#include "tenax/health/health.h"
#include "tenax/store/store.h"

namespace tenax {

struct TENAX_API PreflightResult {
  bool passed = true;
  std::vector<std::string> reasons;  // why it failed (empty when it passed)
  uint64_t gemm_checksum = 0;
  double busbw_gbps = 0;       // measured by the bandwidth probe (0: not run)
  double clock_offset_ms = 0;  // this host's clock against the members' median
  double seconds = 0;          // the preflight's wall time
};

// The deterministic GEMM: C = A·B for n×n float32 matrices filled from a fixed-seed generator,
// one thread, a fixed order of operations; returns a checksum of C's bytes. `corrupt` flips one
// value of C first (silent data corruption, for tests).
TENAX_API uint64_t gemm_checksum(int64_t n, bool corrupt = false);
// The same A and B multiplied on `device` by ATen (cuBLAS on CUDA, the BLAS on the CPU), C
// copied back and checksummed the same way. Equal on equal devices and libraries; a CPU and a
// CUDA checksum differ (other summation orders), so a job compares devices of one kind.
// Throws ConfigError naming the device when it is not available.
TENAX_API uint64_t device_gemm_checksum(int64_t n, const std::string& device, bool corrupt = false);

// The host checks alone: /dev/shm and memory for `memory_bytes`, `directory` writable with
// `disk_bytes` of room, and `durable_probe` ("" when the durable tier is usable, else why).
TENAX_API std::vector<std::string> host_checks(const PreflightOptions& options,
                                               const FaultInjector* faults,
                                               const std::function<std::string()>& durable_probe);

// The whole preflight of member `member` on `host` of run `run`, coordinated with the other
// starting members through `store` (health/<run>/…): host checks, quarantine, the GEMM against
// the majority's checksum, clock offset, then, among the members that arrived together, an
// all-reduce of known data checked element by element and the bus-bandwidth floor. A member
// that fails records its reasons under health/<run>/failed/<member> and its host's failure
// (quarantined at the second within the window). Never throws for a failed check.
TENAX_API PreflightResult run_preflight(std::shared_ptr<Store> store, const std::string& run,
                                        const std::string& member, const std::string& host,
                                        const PreflightOptions& options,
                                        const FaultInjector* faults,
                                        const std::function<std::string()>& durable_probe = {});

// The members of `run` that preflight kept out, with their reasons ("w2 on node3: …").
TENAX_API std::vector<std::string> kept_out(Store& store, const std::string& run);

// Quarantined hosts (host, why) and clearing one (true iff it was quarantined).
TENAX_API std::vector<std::pair<std::string, std::string>> quarantined_hosts(Store& store);
TENAX_API bool clear_quarantine(Store& store, const std::string& host);

}  // namespace tenax
