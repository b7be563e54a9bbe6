#pragma once

// The plan of a restore from a group's memory (CheckpointEngine::restore_from_group): which
// member takes which saved part from which holder. Pure: every member computes the same plan
// from the same offers, with no communication. Internal.

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "checkpoint/snapshot.h"

namespace tenax::detail {

// What a member offers (committed snapshots in its memory) and wants (its state's parts).
struct Offer {
  std::string member;
  std::vector<Layout> snapshots;  // index: the snapshot id within this member
  std::vector<char> own;          // 1: the member's own snapshot, 0: a replica it holds
  Layout want;
};

// One saved part (or a snapshot's blobs, shard = -1) taken from a holder.
struct Item {
  int holder, snapshot, shard;
  bool operator<(const Item& o) const;
};

// For each member: the items it takes, per wanted part, and where its ints and blobs come from.
struct Plan {
  int64_t step = -1, generation = 0;
  std::vector<std::vector<std::vector<Item>>> parts;  // [member][wanted part] -> items
  std::vector<Item> extras;                           // [member] -> snapshot of ints and blobs
  std::vector<std::vector<Item>> items;               // [member] -> distinct items, plan order
};

// The plan for the snapshots saved at (step, generation), or nullopt when some wanted part is
// not covered. Deterministic: every member computes the same one. Each part is taken from the
// holder nearest after the member in ring order (the member itself first), so load spreads.
std::optional<Plan> make_plan(const std::vector<Offer>& offers, int64_t step, int64_t generation);

// The bytes of an item: its part's, or its snapshot's blobs back to back.
int64_t item_bytes(const std::vector<Offer>& offers, const Item& it);

// Elements in a part of `sizes`.
int64_t volume(const std::vector<int64_t>& sizes);

}  // namespace tenax::detail
