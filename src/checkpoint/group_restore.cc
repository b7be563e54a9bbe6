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
#include "checkpoint/group_plan.h"
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
using detail::Item;
using detail::Offer;
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

// This member's offer: every committed snapshot of the run in its memory (its own and the
// replicas it holds for peers) and the parts its state wants; `data` receives each offered
// snapshot's bytes.
std::string local_offer(const CheckpointOptions& o, const std::string& member,
                        detail::MemoryTier& own, detail::MemoryTier& held, const StateDict& state,
                        std::vector<const char*>& data) {
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
        log(LogLevel::kWarning,
            "checkpoint: " + member + ": skipping " + region.name() + ": " + e.what());
      }
    }
  }
  offer["want"] = detail::to_json(detail::plan(state));
  return offer.dump();
}

// Every member's offer, in rank order (one all-gather).
std::vector<Offer> gather_offers(Communicator& comm, const std::string& mine) {
  std::vector<Offer> offers(comm.size());
  const auto texts = all_gather_strings(comm, mine);
  for (int r = 0; r < comm.size(); ++r) {
    auto j = nlohmann::json::parse(texts[r]);
    offers[r].member = j.at("member").get<std::string>();
    for (const auto& s : j.at("snapshots")) {
      offers[r].snapshots.push_back(detail::layout_from_json(s.at("layout"), offers[r].member));
      offers[r].own.push_back(s.at("own").get<bool>() ? 1 : 0);
    }
    offers[r].want = detail::layout_from_json(j.at("want"), offers[r].member);
  }
  return offers;
}

// The bytes of every item this member takes under a plan: in its own memory, or received.
struct Fetched {
  std::map<Item, const char*> where;
  std::vector<std::string> received;  // per holder, its items back to back
  std::string local_blobs;            // this member's own blobs packed as a sender would
};

// Sends what the others take from this member and receives what it takes from them.
void fetch_items(Communicator& comm, const detail::Plan& plan, const std::vector<Offer>& offers,
                 const std::vector<const char*>& data, Fetched& out) {
  const int n = comm.size(), me = comm.rank();
  std::vector<std::string> packs(n);
  for (int r = 0; r < n; ++r) {
    if (r == me) continue;
    for (const auto& it : plan.items[r]) {
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
      sends.push_back(
          comm.send_async(byte_view(packs[r].data(), packs[r].size()), r, kGroupRestoreTag));
    }
  }
  out.received.assign(n, std::string());
  for (const auto& it : plan.items[me]) {
    if (it.holder == me) {
      const Layout& l = offers[me].snapshots[it.snapshot];
      const char* base = data[it.snapshot];
      if (it.shard >= 0) {
        out.where[it] = base + l.shards[it.shard].offset;
      } else {
        for (const auto& b : l.blobs) out.local_blobs.append(base + b.offset, b.nbytes);
        out.where[it] = out.local_blobs.data();
      }
    } else if (detail::item_bytes(offers, it) == 0) {
      // Nothing to receive (a snapshot without blobs, taken by a member that has none of its
      // own, such as a spare that never trained): the item is there, empty.
      out.where[it] = out.local_blobs.data();
    } else {
      out.received[it.holder].resize(out.received[it.holder].size() +
                                     detail::item_bytes(offers, it));
    }
  }
  for (int d = 1; d < n; ++d) {
    const int h = (me - d + n) % n;
    if (out.received[h].empty()) continue;
    comm.recv(byte_view(out.received[h].data(), out.received[h].size()), h, kGroupRestoreTag);
    size_t pos = 0;
    for (const auto& it : plan.items[me]) {
      if (it.holder != h) continue;
      out.where[it] = out.received[h].data() + pos;
      pos += detail::item_bytes(offers, it);
    }
  }
  for (auto& w : sends) w->wait();
}

// Checks every fetched item against its checksum: "" when all are intact, else a line per
// failure. Counts the bytes and whether any came from another member.
std::string verify_items(const detail::Plan& plan, const std::vector<Offer>& offers, int me,
                         const Fetched& fetched, int64_t& bytes, bool& from_peer) {
  std::string errors;
  for (const auto& [it, ptr] : fetched.where) {
    const Layout& l = offers[it.holder].snapshots[it.snapshot];
    const std::string origin = "step " + std::to_string(plan.step) + " of " + l.member +
                               " held by " + offers[it.holder].member;
    from_peer |= it.holder != me;
    if (it.shard >= 0) {
      const ShardRecord& s = l.shards[it.shard];
      bytes += s.nbytes;
      if (detail::crc32c(ptr, s.nbytes) != s.crc) {
        errors += "\n  " + origin + ": shard '" + s.name + "' failed its checksum";
      }
      continue;
    }
    const char* p = ptr;
    for (const auto& b : l.blobs) {
      if (detail::crc32c(p, b.nbytes) != b.crc) {
        errors += "\n  " + origin + ": blob '" + b.name + "' failed its checksum";
      }
      p += b.nbytes;
    }
  }
  return errors;
}

// Writes the wanted parts (resharded where the saved parts differ), ints and blobs into
// `state`. Returns true iff some part was resharded.
bool assemble(const detail::Plan& plan, const std::vector<Offer>& offers, int me,
              const Fetched& fetched, StateDict& state) {
  bool resharded = false;
  for (size_t k = 0; k < state.tensors().size(); ++k) {
    const auto& target = state.tensors()[k];
    const auto& w = offers[me].want.shards[k];
    const size_t elem = detail::dtype_size(w.dtype);
    const auto& chosen = plan.parts[me][k];
    if (chosen.empty()) continue;  // no elements
    const auto& first =
        offers[chosen[0].holder].snapshots[chosen[0].snapshot].shards[chosen[0].shard];
    if (chosen.size() == 1 && first.offsets == w.offsets && first.sizes == w.sizes) {
      fill_tensor(target.tensor, fetched.where.at(chosen[0]));
      continue;
    }
    resharded = true;
    std::string buf(detail::volume(w.sizes) * elem, '\0');
    for (const auto& it : chosen) {
      const ShardRecord& s = offers[it.holder].snapshots[it.snapshot].shards[it.shard];
      detail::copy_overlap(fetched.where.at(it), s.offsets, s.sizes, buf.data(), w.offsets,
                           w.sizes, elem);
    }
    fill_tensor(target.tensor, buf.data());
  }
  const Item& ex = plan.extras[me];
  const Layout& el = offers[ex.holder].snapshots[ex.snapshot];
  for (const auto& [k, v] : el.ints) state.set_int(k, v);
  const char* p = fetched.where.at(ex);
  for (const auto& b : el.blobs) {
    state.set_blob(b.name, std::string(p, b.nbytes));
    p += b.nbytes;
  }
  return resharded;
}

}  // namespace

std::optional<RestoreResult> CheckpointEngine::restore_from_group(const CheckpointOptions& o,
                                                                  Communicator& comm,
                                                                  StateDict& state) {
  const int me = comm.rank();
  const std::string member = o.member.empty() ? "r" + std::to_string(me) : o.member;
  detail::MemoryTier own(o.run, member, o.memory_slots, 0, 's');
  detail::MemoryTier held(o.run, member, o.memory_slots, 0, 'p');
  std::vector<const char*> data;  // per offered snapshot
  const std::vector<Offer> offers =
      gather_offers(comm, local_offer(o, member, own, held, state, data));
  // Candidate (step, generation) keys, newest first.
  std::set<std::pair<int64_t, int64_t>> keys;
  for (const auto& of : offers) {
    for (const auto& l : of.snapshots) keys.insert({l.step, l.generation});
  }
  for (auto key = keys.rbegin(); key != keys.rend(); ++key) {
    const auto plan = detail::make_plan(offers, key->first, key->second);
    if (!plan) continue;
    Fetched fetched;
    fetch_items(comm, *plan, offers, data, fetched);
    int64_t bytes = 0;
    bool from_peer = false;
    const std::string errors = verify_items(*plan, offers, me, fetched, bytes, from_peer);
    // Written only once every member has all its items intact: a step that fails anywhere
    // leaves every member's tensors as they were.
    at::Tensor ok = at::full({1}, errors.empty() ? 1 : 0, at::kLong);
    comm.all_reduce(ok, ReduceOp::kMin);
    if (ok.item<int64_t>() == 1) {
      const bool resharded = assemble(*plan, offers, me, fetched, state);
      return RestoreResult{plan->step, from_peer ? "peer" : "memory", bytes, resharded};
    }
    log(LogLevel::kWarning, "checkpoint: " + member + ": step " + std::to_string(plan->step) +
                                " is not intact in the group's memory; trying an older one" +
                                errors);
  }
  return std::nullopt;
}

}  // namespace tenax
