#pragma once

// Comparing data-parallel replicas (internal): which parts of the state a rank holds (its
// signature: names, global shapes, offsets) and a hash of their bytes. Ranks with the same
// signature hold replicas and must hash alike.

#include <cstdint>
#include <vector>

#include "tenax/checkpoint/state.h"

namespace tenax::detail {

uint64_t state_signature(const StateDict& state);
uint64_t state_hash(const StateDict& state);

// Per rank (signature, hash): the ranks whose hash differs from the strict majority of the
// ranks sharing their signature (none for groups of fewer than 3 or without a majority).
std::vector<int> replicas_that_differ(const std::vector<uint64_t>& signatures,
                                      const std::vector<uint64_t>& hashes);

}  // namespace tenax::detail
