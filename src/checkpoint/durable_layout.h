#pragma once

// Where a run's steps live in the durable tier, shared by the engine and tenax-ckpt:
//   <run>/step-<12 digits>/manifest.json           written last: the step exists once it does
//   <run>/step-<12 digits>/rank-<5 digits>[-k].bin  a rank's parts

#include <cstdint>
#include <string>
#include <vector>

#include "checkpoint/object_store.h"
#include "checkpoint/snapshot.h"

namespace tenax::detail {

std::string step_dir(const std::string& run, int64_t step);
std::string rank_file(int rank);
// Steps of `run` that have a manifest, newest first.
std::vector<int64_t> durable_steps(ObjectStore& store, const std::string& run);
// The bytes of part `s` of the step in `dir`. Throws CheckpointError naming the part when its
// object is missing or short, or when its CRC-32C does not match.
std::string read_part(ObjectStore& store, const std::string& dir, const ShardRecord& s);

}  // namespace tenax::detail
