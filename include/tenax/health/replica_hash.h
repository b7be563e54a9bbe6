#pragma once

// Comparing data-parallel replicas: which parts of the state a rank holds (its
// signature: names, global shapes, offsets) and a hash of their bytes. Ranks with the same
// signature hold replicas and must hash alike. Pure functions: any thread, on a state no thread
// changes meanwhile.

#include <cstdint>
#include <vector>

#include "tenax/checkpoint/state.h"
#include "tenax/core/export.h"

namespace tenax {

TENAX_API uint64_t state_signature(const StateDict& state);
TENAX_API uint64_t state_hash(const StateDict& state);

// Per rank (signature, hash): the ranks whose hash differs from the strict majority of the
// ranks sharing their signature (none for groups of fewer than 3 or without a majority).
TENAX_API std::vector<int> replicas_that_differ(const std::vector<uint64_t>& signatures,
                                      const std::vector<uint64_t>& hashes);

}  // namespace tenax
