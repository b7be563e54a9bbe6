#include "checkpoint/group_plan.h"

#include <algorithm>
#include <map>
#include <set>
#include <tuple>

namespace tenax::detail {
namespace {

// Elements shared by two parts of one global tensor.
int64_t overlap(const std::vector<int64_t>& ao, const std::vector<int64_t>& as,
                const std::vector<int64_t>& bo, const std::vector<int64_t>& bs) {
  int64_t v = 1;
  for (size_t d = 0; d < ao.size(); ++d) {
    v *= std::max<int64_t>(0, std::min(ao[d] + as[d], bo[d] + bs[d]) - std::max(ao[d], bo[d]));
  }
  return v;
}

}  // namespace

bool Item::operator<(const Item& o) const {
  return std::tie(holder, snapshot, shard) < std::tie(o.holder, o.snapshot, o.shard);
}

int64_t volume(const std::vector<int64_t>& sizes) {
  int64_t v = 1;
  for (int64_t s : sizes) v *= s;
  return v;
}

int64_t item_bytes(const std::vector<Offer>& offers, const Item& it) {
  const Layout& l = offers[it.holder].snapshots[it.snapshot];
  if (it.shard >= 0) return l.shards[it.shard].nbytes;
  int64_t n = 0;
  for (const auto& b : l.blobs) n += b.nbytes;
  return n;
}

std::optional<Plan> make_plan(const std::vector<Offer>& offers, int64_t step, int64_t generation) {
  const int n = static_cast<int>(offers.size());
  Plan plan;
  plan.step = step;
  plan.generation = generation;
  plan.parts.resize(n);
  plan.extras.resize(n);
  plan.items.resize(n);
  // Saved parts at this key, by tensor name: distinct (offsets, sizes), each with its holders.
  struct Saved {
    const ShardRecord* record;
    std::vector<Item> holders;
  };
  std::map<std::string, std::map<std::pair<std::vector<int64_t>, std::vector<int64_t>>, Saved>>
      saved;
  for (int h = 0; h < n; ++h) {
    for (int s = 0; s < static_cast<int>(offers[h].snapshots.size()); ++s) {
      const Layout& l = offers[h].snapshots[s];
      if (l.step != step || l.generation != generation) continue;
      for (int k = 0; k < static_cast<int>(l.shards.size()); ++k) {
        const ShardRecord& r = l.shards[k];
        auto& entry = saved[r.name][{r.offsets, r.sizes}];
        if (!entry.record) entry.record = &r;
        entry.holders.push_back({h, s, k});
      }
    }
  }
  // The holder nearest after `r` in ring order, the member itself first: load spreads out.
  auto nearest = [&](const std::vector<Item>& holders, int r) {
    const Item* best = nullptr;
    for (const auto& it : holders) {
      if (!best || (it.holder - r + n) % n < (best->holder - r + n) % n) best = &it;
    }
    return *best;
  };
  for (int r = 0; r < n; ++r) {
    std::set<Item> taken;
    auto take = [&](const Item& it) {
      if (taken.insert(it).second) plan.items[r].push_back(it);
    };
    for (const auto& w : offers[r].want.shards) {
      auto byname = saved.find(w.name);
      if (byname == saved.end()) return std::nullopt;
      std::vector<Item> chosen;
      int64_t covered = 0;
      for (const auto& [key, entry] : byname->second) {
        if (entry.record->dtype != w.dtype || entry.record->global_shape != w.global_shape) {
          return std::nullopt;
        }
        const int64_t shared = overlap(key.first, key.second, w.offsets, w.sizes);
        if (shared == 0) continue;
        chosen.push_back(nearest(entry.holders, r));
        covered += shared;
      }
      if (covered != volume(w.sizes)) return std::nullopt;
      for (const auto& it : chosen) take(it);
      plan.parts[r].push_back(std::move(chosen));
    }
    // Ints and blobs: from a snapshot the member holds at this key (its own first), else from
    // the nearest holder of one.
    std::vector<Item> snaps;
    for (int h = 0; h < n; ++h) {
      for (int s = 0; s < static_cast<int>(offers[h].snapshots.size()); ++s) {
        const Layout& l = offers[h].snapshots[s];
        if (l.step == step && l.generation == generation) snaps.push_back({h, s, -1});
      }
    }
    if (snaps.empty()) return std::nullopt;
    Item extra = nearest(snaps, r);
    for (const auto& it : snaps) {
      if (it.holder == r && offers[r].own[it.snapshot]) extra = it;
    }
    plan.extras[r] = extra;
    take(extra);
  }
  return plan;
}

}  // namespace tenax::detail
