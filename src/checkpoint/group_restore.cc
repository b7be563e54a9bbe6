// CheckpointEngine::restore_from_group: restore from whatever the members of a communicator
// hold in memory, whatever world or mesh saved it. See docs/checkpoint.md, "Restoring across a
// re-formation".

#include <ATen/ops/empty.h>
#include <ATen/ops/full.h>
#include <ATen/ops/zeros.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <set>
#include <tuple>

#include "checkpoint/crc32c.h"
#include "checkpoint/memory_tier.h"
#include "checkpoint/snapshot.h"
#include "tenax/checkpoint/engine.h"
#include "tenax/core/error.h"
#include "tenax/core/logging.h"

namespace tenax {
namespace {

using detail::Layout;
using detail::byte_view;
using detail::fill_tensor;
using detail::ShardRecord;

constexpr uint32_t kGroupRestoreTag = 0x7e10;

// Every member's string, in rank order.
std::vector<std::string> all_gather_strings(Communicator& comm, const std::string& mine) {
  const int n = comm.size();
  at::Tensor lens = at::empty({n}, at::kLong);
  comm.all_gather(lens, at::full({1}, static_cast<int64_t>(mine.size()), at::kLong));
  int64_t longest = 1;
  for (int r = 0; r < n; ++r) longest = std::max(longest, lens[r].item<int64_t>());
  at::Tensor buf = at::zeros({longest}, at::kByte);
  std::memcpy(buf.data_ptr(), mine.data(), mine.size());
  at::Tensor all = at::empty({n * longest}, at::kByte);
  comm.all_gather(all, buf);
  std::vector<std::string> out(n);
  const char* base = static_cast<const char*>(all.data_ptr());
  for (int r = 0; r < n; ++r) out[r].assign(base + r * longest, lens[r].item<int64_t>());
  return out;
}

int64_t volume(const std::vector<int64_t>& sizes) {
  int64_t v = 1;
  for (int64_t s : sizes) v *= s;
  return v;
}

// Elements shared by two parts of one global tensor.
int64_t overlap(const std::vector<int64_t>& ao, const std::vector<int64_t>& as,
                const std::vector<int64_t>& bo, const std::vector<int64_t>& bs) {
  int64_t v = 1;
  for (size_t d = 0; d < ao.size(); ++d) {
    v *= std::max<int64_t>(0, std::min(ao[d] + as[d], bo[d] + bs[d]) - std::max(ao[d], bo[d]));
  }
  return v;
}

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
  bool operator<(const Item& o) const {
    return std::tie(holder, snapshot, shard) < std::tie(o.holder, o.snapshot, o.shard);
  }
};

// For each member: the items it takes, per wanted part, and where its ints and blobs come from.
struct Plan {
  int64_t step = -1, generation = 0;
  std::vector<std::vector<std::vector<Item>>> parts;  // [member][wanted part] -> items
  std::vector<Item> extras;                           // [member] -> snapshot of ints and blobs
  std::vector<std::vector<Item>> items;               // [member] -> distinct items, plan order
};

int64_t item_bytes(const std::vector<Offer>& offers, const Item& it) {
  const Layout& l = offers[it.holder].snapshots[it.snapshot];
  if (it.shard >= 0) return l.shards[it.shard].nbytes;
  int64_t n = 0;
  for (const auto& b : l.blobs) n += b.nbytes;
  return n;
}

// The plan for the snapshots saved at (step, generation), or nullopt when some wanted part is
// not covered. Deterministic: every member computes the same one.
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

}  // namespace

std::optional<RestoreResult> CheckpointEngine::restore_from_group(const CheckpointOptions& o,
                                                                  Communicator& comm,
                                                                  StateDict& state) {
  const int n = comm.size(), me = comm.rank();
  const std::string member = o.member.empty() ? "r" + std::to_string(me) : o.member;
  detail::MemoryTier own(o.run, member, o.memory_slots, 0, 's');
  detail::MemoryTier held(o.run, member, o.memory_slots, 0, 'p');
  // What this member offers: every committed snapshot of the run in its memory.
  std::vector<const char*> data;  // per offered snapshot
  nlohmann::json offer = {{"member", member}, {"snapshots", nlohmann::json::array()}};
  for (auto* tier : {&own, &held}) {
    for (auto [slot, step] : tier->committed()) {
      auto& region = tier->region(slot);
      try {
        Layout l = detail::layout_from_json(
            nlohmann::json::parse(std::string(region.json(), region.header()->json_bytes)),
            region.name());
        if (l.run != o.run) continue;
        offer["snapshots"].push_back({{"own", tier == &own}, {"layout", detail::to_json(l)}});
        data.push_back(region.data());
      } catch (const std::exception& e) {
        log(LogLevel::kWarning, "checkpoint: " + member + ": skipping " + region.name() + ": " +
                                    e.what());
      }
    }
  }
  offer["want"] = detail::to_json(detail::plan(state));
  std::vector<Offer> offers(n);
  {
    const auto texts = all_gather_strings(comm, offer.dump());
    for (int r = 0; r < n; ++r) {
      auto j = nlohmann::json::parse(texts[r]);
      offers[r].member = j.at("member").get<std::string>();
      for (const auto& s : j.at("snapshots")) {
        offers[r].snapshots.push_back(detail::layout_from_json(s.at("layout"), offers[r].member));
        offers[r].own.push_back(s.at("own").get<bool>() ? 1 : 0);
      }
      offers[r].want = detail::layout_from_json(j.at("want"), offers[r].member);
    }
  }
  // Candidate (step, generation) keys, newest first.
  std::set<std::pair<int64_t, int64_t>> keys;
  for (const auto& of : offers) {
    for (const auto& l : of.snapshots) keys.insert({l.step, l.generation});
  }
  for (auto key = keys.rbegin(); key != keys.rend(); ++key) {
    auto plan = make_plan(offers, key->first, key->second);
    if (!plan) continue;
    // Send what others take from this member; receive what this member takes from others.
    std::vector<std::string> packs(n);
    for (int r = 0; r < n; ++r) {
      if (r == me) continue;
      for (const auto& it : plan->items[r]) {
        if (it.holder != me) continue;
        const Layout& l = offers[me].snapshots[it.snapshot];
        const char* base = data[it.snapshot];
        if (it.shard >= 0) {
          packs[r].append(base + l.shards[it.shard].offset, l.shards[it.shard].nbytes);
        } else {
          for (const auto& b : l.blobs) packs[r].append(base + b.offset, b.nbytes);
        }
      }
    }
    std::vector<WorkHandle> sends;
    for (int d = 1; d < n; ++d) {
      const int r = (me + d) % n;
      if (!packs[r].empty()) {
        sends.push_back(comm.send_async(byte_view(packs[r].data(), packs[r].size()), r,
                                        kGroupRestoreTag));
      }
    }
    std::map<Item, const char*> where;  // the bytes of every item this member takes
    std::vector<std::string> received(n);
    std::string local_blobs;  // blobs packed back to back, as a sender would
    for (const auto& it : plan->items[me]) {
      if (it.holder == me) {
        const Layout& l = offers[me].snapshots[it.snapshot];
        const char* base = data[it.snapshot];
        if (it.shard >= 0) {
          where[it] = base + l.shards[it.shard].offset;
        } else {
          for (const auto& b : l.blobs) local_blobs.append(base + b.offset, b.nbytes);
          where[it] = local_blobs.data();
        }
      } else {
        received[it.holder].resize(received[it.holder].size() + item_bytes(offers, it));
      }
    }
    for (int d = 1; d < n; ++d) {
      const int h = (me - d + n) % n;
      if (received[h].empty()) continue;
      comm.recv(byte_view(received[h].data(), received[h].size()), h, kGroupRestoreTag);
      size_t pos = 0;
      for (const auto& it : plan->items[me]) {
        if (it.holder != h) continue;
        where[it] = received[h].data() + pos;
        pos += item_bytes(offers, it);
      }
    }
    for (auto& w : sends) w->wait();
    // Verify every item, then assemble the wanted parts.
    std::string errors;
    int64_t bytes = 0;
    bool resharded = false, from_peer = false;
    for (const auto& [it, ptr] : where) {
      const Layout& l = offers[it.holder].snapshots[it.snapshot];
      const std::string origin = "step " + std::to_string(plan->step) + " of " + l.member +
                                 " held by " + offers[it.holder].member;
      from_peer |= it.holder != me;
      if (it.shard >= 0) {
        const ShardRecord& s = l.shards[it.shard];
        bytes += s.nbytes;
        if (detail::crc32c(ptr, s.nbytes) != s.crc) {
          errors += "\n  " + origin + ": shard '" + s.name + "' failed its checksum";
        }
      } else {
        const char* p = ptr;
        for (const auto& b : l.blobs) {
          if (detail::crc32c(p, b.nbytes) != b.crc) {
            errors += "\n  " + origin + ": blob '" + b.name + "' failed its checksum";
          }
          p += b.nbytes;
        }
      }
    }
    // Written only once every member has all its items intact: a step that fails anywhere
    // leaves every member's tensors as they were.
    at::Tensor ok = at::full({1}, errors.empty() ? 1 : 0, at::kLong);
    comm.all_reduce(ok, ReduceOp::kMin);
    if (ok.item<int64_t>() == 1) {
      for (size_t k = 0; k < state.tensors().size(); ++k) {
        const auto& target = state.tensors()[k];
        const auto& w = offers[me].want.shards[k];
        const size_t elem = detail::dtype_size(w.dtype);
        const auto& chosen = plan->parts[me][k];
        if (chosen.empty()) continue;  // no elements
        const auto& first = offers[chosen[0].holder].snapshots[chosen[0].snapshot].shards[chosen[0].shard];
        if (chosen.size() == 1 && first.offsets == w.offsets && first.sizes == w.sizes) {
          fill_tensor(target.tensor, where.at(chosen[0]));
          continue;
        }
        resharded = true;
        std::string buf(volume(w.sizes) * elem, '\0');
        for (const auto& it : chosen) {
          const ShardRecord& s = offers[it.holder].snapshots[it.snapshot].shards[it.shard];
          detail::copy_overlap(where.at(it), s.offsets, s.sizes, buf.data(), w.offsets, w.sizes,
                               elem);
        }
        fill_tensor(target.tensor, buf.data());
      }
      const Item& ex = plan->extras[me];
      const Layout& el = offers[ex.holder].snapshots[ex.snapshot];
      for (const auto& [k, v] : el.ints) state.set_int(k, v);
      const char* p = where.at(ex);
      for (const auto& b : el.blobs) {
        state.set_blob(b.name, std::string(p, b.nbytes));
        p += b.nbytes;
      }
      return RestoreResult{plan->step, from_peer ? "peer" : "memory", bytes, resharded};
    }
    log(LogLevel::kWarning, "checkpoint: " + member + ": step " + std::to_string(plan->step) +
                                " is not intact in the group's memory; trying an older one" +
                                errors);
  }
  return std::nullopt;
}

}  // namespace tenax
