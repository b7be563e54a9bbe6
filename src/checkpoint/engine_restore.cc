// restore(): the memory and peer tiers first (the newest step every rank holds itself or
// through its peer's replica), then the durable tier (resharding when the layout changed).
// Every rank verifies its source before any rank writes into its tensors.

#include <algorithm>
#include <set>

#include "checkpoint/crc32c.h"
#include "checkpoint/durable_layout.h"
#include "checkpoint/engine_impl.h"
#include "checkpoint/parallel_for.h"
#include "tenax/core/error.h"
#include "tenax/core/logging.h"

namespace tenax {

std::optional<RestoreResult> CheckpointEngine::Impl::restore(StateDict& state) {
  {  // every save so far committed in memory and replicated (persistence may go on): the
     // replicator writes the replica slots that the peer tier reads below
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait_for(lock, o_.timeout, [&] {
      return commits_.empty() && !committing_ && replications_.empty() && !replicating_;
    });
  }
  std::string errors;
  if (auto r = restore_memory(state, errors)) return r;
  if (durable_) {
    if (auto r = restore_durable(state, errors)) return r;
  }
  if (!errors.empty()) {
    throw CheckpointError("checkpoint: rank " + std::to_string(comm_->rank()) +
                          ": no complete step could be restored:" + errors);
  }
  return std::nullopt;
}

// Collective: the ranks whose `ok` is false, the same list on every rank.
std::vector<int> CheckpointEngine::Impl::failed_ranks(bool ok) {
  at::Tensor oks = at::empty({comm_->size()}, at::kLong);
  comm_->all_gather(oks, at::full({1}, ok ? 1 : 0, at::kLong));
  std::vector<int> failed;
  for (int r = 0; r < comm_->size(); ++r) {
    if (oks[r].item<int64_t>() != 1) failed.push_back(r);
  }
  return failed;
}

// "\n  <what> is not intact on rank(s) 1, 3": so that a rank whose own parts were fine
// still says why the step was not restored.
std::string CheckpointEngine::Impl::not_intact(const std::string& what,
                                               const std::vector<int>& ranks) {
  std::string line = "\n  " + what + " is not intact on rank" + (ranks.size() > 1 ? "s " : " ");
  for (size_t k = 0; k < ranks.size(); ++k) line += (k ? ", " : "") + std::to_string(ranks[k]);
  return line;
}

void CheckpointEngine::Impl::restore_extras(StateDict& state,
                                            const std::map<std::string, int64_t>& ints,
                                            const std::map<std::string, std::string>& blobs) {
  for (const auto& [k, v] : ints) state.set_int(k, v);
  for (const auto& [k, v] : blobs) state.set_blob(k, v);
}

// The blobs of a verified snapshot, by name.
std::map<std::string, std::string> CheckpointEngine::Impl::blobs_of(const Layout& layout,
                                                                    const char* data) {
  std::map<std::string, std::string> blobs;
  for (const auto& b : layout.blobs) blobs[b.name] = std::string(data + b.offset, b.nbytes);
  return blobs;
}

// Committed snapshots of a memory tier (own or replica) usable for this restore, by step.
// `rank`: the rank that saved them (this one, or the peer source for replicas).
CheckpointEngine::Impl::Snapshots CheckpointEngine::Impl::usable_snapshots(
    detail::MemoryTier& tier, int rank, const StateDict* state, std::string& errors) {
  Snapshots usable;
  for (auto [slot, step] : tier.committed()) {
    auto& r = tier.region(slot);
    try {
      Layout l = detail::layout_from_json(
          nlohmann::json::parse(std::string(r.json(), r.header()->json_bytes)), r.name());
      if (l.run == o_.run && l.world == comm_->size() && l.rank == rank &&
          (state == nullptr || detail::same_parts(l, *state))) {
        usable.emplace(step, std::make_pair(slot, std::move(l)));
      }
    } catch (const std::exception& e) {
      errors += "\n  memory tier: " + r.name() + ": " + e.what();
    }
  }
  return usable;
}

// Every rank's steps in memory, own and held for its source, newest first (one all-gather).
std::vector<int64_t> CheckpointEngine::Impl::gather_memory_steps(const Snapshots& own,
                                                                 const Snapshots& held) {
  const int slots = o_.memory_slots;
  at::Tensor mine = at::full({2 * slots}, -1, at::kLong);
  int i = 0;
  for (auto it = own.rbegin(); it != own.rend() && i < slots; ++it) mine[i++] = it->first;
  i = slots;
  for (auto it = held.rbegin(); it != held.rend() && i < 2 * slots; ++it) mine[i++] = it->first;
  at::Tensor all = at::empty({2 * slots * comm_->size()}, at::kLong);
  comm_->all_gather(all, mine);
  const int64_t* p = all.data_ptr<int64_t>();
  return std::vector<int64_t>(p, p + all.numel());
}

// The holder of `step`'s replica for its source sends it (header, bytes, layout).
std::vector<WorkHandle> CheckpointEngine::Impl::send_replica(int64_t step,
                                                             const Snapshots& held) {
  const auto& r = replicas_->region(held.at(step).first);
  at::Tensor hdr = at::full({2}, -1, at::kLong);
  hdr[0] = static_cast<int64_t>(r.header()->data_bytes);
  hdr[1] = static_cast<int64_t>(r.header()->json_bytes);
  std::vector<WorkHandle> sends;
  sends.push_back(comm_->send_async(hdr, peer_src_, kRestoreHeader));
  sends.push_back(comm_->send_async(byte_view(r.data(), hdr[0].item<int64_t>()), peer_src_,
                                    kRestoreData));
  sends.push_back(comm_->send_async(byte_view(r.json(), hdr[1].item<int64_t>()), peer_src_,
                                    kRestoreJson));
  return sends;
}

// This rank's source of `step`: its own slot, or its replica received from its peer. False
// (with `errors` saying why) when the source is not the state asked for or fails a checksum;
// writes nothing into the state.
bool CheckpointEngine::Impl::read_memory_source(int64_t step, bool from_peer, const Snapshots& own,
                                                const StateDict& state, MemorySource& src,
                                                std::string& errors) {
  const int rank = comm_->rank();
  const std::string where =
      from_peer ? "peer tier: step " + std::to_string(step) + ", rank " + std::to_string(rank) +
                      "'s replica on rank " + std::to_string(peer_dst_)
                : "memory tier: step " + std::to_string(step) + ", rank " + std::to_string(rank);
  if (!from_peer) {
    const auto& [slot, layout] = own.at(step);
    src.layout = layout;
    src.data = memory_.region(slot).data();
  } else {
    at::Tensor hdr = at::full({2}, -1, at::kLong);
    comm_->recv(hdr, peer_dst_, kRestoreHeader);
    src.received.resize(static_cast<size_t>(hdr[0].item<int64_t>()));
    std::string json(static_cast<size_t>(hdr[1].item<int64_t>()), '\0');
    comm_->recv(byte_view(src.received.data(), int64_t(src.received.size())), peer_dst_,
                kRestoreData);
    comm_->recv(byte_view(json.data(), int64_t(json.size())), peer_dst_, kRestoreJson);
    try {
      src.layout = detail::layout_from_json(nlohmann::json::parse(json), where);
      if (!detail::same_parts(src.layout, state)) {
        throw CheckpointError("the replica holds other tensor parts than the ones asked for");
      }
      src.data = src.received.data();
    } catch (const std::exception& e) {
      errors += "\n  " + where + ": " + e.what();
      return false;
    }
  }
  const std::string bad = detail::verify_crcs(src.layout, src.data, where);
  errors += bad;
  return bad.empty();
}

// Memory and peer tiers: the newest step that every rank holds itself or that its peer
// holds a replica of. Ranks without their own copy receive the replica from the peer.
std::optional<RestoreResult> CheckpointEngine::Impl::restore_memory(StateDict& state,
                                                                    std::string& errors) {
  const int slots = o_.memory_slots, rank = comm_->rank(), world = comm_->size();
  const Snapshots own = usable_snapshots(memory_, rank, &state, errors);
  Snapshots held;  // replicas of peer_src_
  if (replicas_) held = usable_snapshots(*replicas_, peer_src_, nullptr, errors);
  const std::vector<int64_t> all = gather_memory_steps(own, held);
  auto has = [&](int r, int64_t step, bool replica) {
    const int64_t* first = &all[r * 2 * slots + (replica ? slots : 0)];
    return std::find(first, first + slots, step) != first + slots;
  };
  // A rank whose own copy is missing (or failed) needs the replica its peer holds.
  auto peer_holds = [&](int r, int64_t step) {
    return replicas_ && has((r + peer_offset_) % world, step, true);
  };
  const std::set<int64_t> candidates(all.begin(), all.end());
  for (auto it = candidates.rbegin(); it != candidates.rend() && *it >= 0; ++it) {
    const int64_t step = *it;
    std::vector<bool> from_peer(world);
    bool whole = true;
    for (int r = 0; r < world && whole; ++r) {
      from_peer[r] = !has(r, step, false);
      whole = !from_peer[r] || peer_holds(r, step);
    }
    if (!whole) continue;
    // Two attempts: ranks whose own copy fails its checksum take their peer's replica in the
    // second. Every rank checks its source first and writes into the tensors only once all
    // sources are intact: a step that fails anywhere leaves every rank's tensors as they were
    // for the next tier (or the caller, when no tier has a whole step).
    for (int attempt = 0;; ++attempt) {
      std::vector<WorkHandle> sends;
      if (replicas_ && from_peer[peer_src_]) sends = send_replica(step, held);
      MemorySource src;
      const bool ok = read_memory_source(step, from_peer[rank], own, state, src, errors);
      for (auto& w : sends) w->wait();
      const std::vector<int> failed = failed_ranks(ok);
      if (failed.empty()) {
        detail::copy_out_of(src.layout, src.data, state);
        restore_extras(state, src.layout.ints, blobs_of(src.layout, src.data));
        int64_t bytes = 0;
        for (const auto& s : src.layout.shards) bytes += s.nbytes;
        return RestoreResult{step, from_peer[rank] ? "peer" : "memory", bytes, false};
      }
      bool retry = attempt == 0;
      for (int r : failed) {
        if (from_peer[r] || !peer_holds(r, step)) retry = false;
        from_peer[r] = true;
      }
      if (!retry) {
        errors += not_intact("memory/peer tier: step " + std::to_string(step), failed);
        log(LogLevel::kWarning, "checkpoint: memory/peer step " + std::to_string(step) +
                                    " is not intact on every rank; trying the next tier" + errors);
        return std::nullopt;
      }
      log(LogLevel::kWarning, "checkpoint: memory step " + std::to_string(step) +
                                  ": a rank's own copy failed; taking its peer's replica" + errors);
    }
  }
  return std::nullopt;
}

// A target tensor assembled from every saved part that overlaps it (resharding); adds the bytes
// read to `bytes`. Throws CheckpointError when the saved parts do not cover it.
std::string CheckpointEngine::Impl::read_resharded(const std::string& dir,
                                                   const std::vector<detail::ShardRecord>& saved,
                                                   const TensorShard& target, int64_t& bytes) {
  const size_t elem = detail::dtype_size(detail::dtype_name(target.tensor));
  const std::vector<int64_t> sizes = target.tensor.sizes().vec();
  std::string buf(target.tensor.numel() * elem, '\0');
  int64_t covered = 0;
  for (const auto& s : saved) {
    bool overlaps = true;
    for (size_t d = 0; d < s.sizes.size(); ++d) {
      overlaps &= std::max(s.offsets[d], target.offsets[d]) <
                  std::min(s.offsets[d] + s.sizes[d], target.offsets[d] + sizes[d]);
    }
    if (!overlaps) continue;
    const std::string part = detail::read_part(*durable_, dir, s);
    bytes += s.nbytes;
    covered += detail::copy_overlap(part.data(), s.offsets, s.sizes, buf.data(), target.offsets,
                                    sizes, elem);
  }
  if (covered != target.tensor.numel()) {
    throw CheckpointError("tensor '" + target.name + "': the saved parts cover " +
                          std::to_string(covered) + " of the " +
                          std::to_string(target.tensor.numel()) + " elements asked for");
  }
  return buf;
}

// Ints and blobs of a durable step: this rank's own when it existed in the saved world, else
// rank 0's; each blob checked against its checksum.
void CheckpointEngine::Impl::load_durable_extras(const nlohmann::json& manifest,
                                                 const std::string& dir, int saved_world,
                                                 Staged& out) {
  const int from = comm_->rank() < saved_world ? comm_->rank() : 0;
  for (const auto& r : manifest.at("ranks")) {
    if (r.at("rank").get<int>() != from) continue;
    out.ints = r.at("ints").get<std::map<std::string, int64_t>>();
    for (const auto& bj : r.at("blobs")) {
      auto b = detail::blob_from_json(bj);
      std::string v = durable_->get_range(dir + "/" + b.file, b.offset, b.nbytes);
      if (detail::crc32c(v.data(), v.size()) != b.crc) {
        throw CheckpointError("blob '" + b.name + "' of rank " + std::to_string(from) +
                              " failed its checksum");
      }
      out.blobs[b.name] = std::move(v);
    }
  }
}

// Reads every part of the durable step `step` that `state` needs and assembles the target
// tensors' bytes in `out` (empty on entry), writing nothing into `state`; false (with `errors`
// saying why) when a part is missing or corrupt.
bool CheckpointEngine::Impl::load_durable(int64_t step, const StateDict& state, std::string& errors,
                                          Staged& out) {
  const std::string dir = step_dir(o_.run, step);
  const std::string where =
      "durable tier " + durable_->describe() + ", step " + std::to_string(step);
  try {
    nlohmann::json m = nlohmann::json::parse(durable_->get(dir + "/manifest.json"));
    if (m.value("run", "") != o_.run || m.value("step", int64_t(-1)) != step) {
      throw CheckpointError("manifest belongs to run '" + m.value("run", "") + "' step " +
                            std::to_string(m.value("step", int64_t(-1))) + ", not run '" + o_.run +
                            "'");
    }
    std::map<std::string, std::vector<detail::ShardRecord>> by_name;
    for (const auto& t : m.at("tensors")) {
      auto s = detail::shard_from_json(t);
      by_name[s.name].push_back(std::move(s));
    }
    const int saved_world = m.at("world").get<int>();
    bool same = saved_world == comm_->size();
    int64_t bytes = 0;
    // Per tensor asked for: the saved part that is exactly it, if any.
    std::vector<const detail::ShardRecord*> exact(state.tensors().size(), nullptr);
    for (size_t i = 0; i < exact.size(); ++i) {
      const auto& target = state.tensors()[i];
      auto it = by_name.find(target.name);
      if (it == by_name.end()) throw CheckpointError("no tensor '" + target.name + "' in it");
      const std::string dtype = detail::dtype_name(target.tensor);
      const std::vector<int64_t> sizes = target.tensor.sizes().vec();
      for (const auto& s : it->second) {
        if (s.dtype != dtype || s.global_shape != target.global_shape) {
          throw CheckpointError("tensor '" + target.name + "' was saved as " + s.dtype +
                                " of global shape " + nlohmann::json(s.global_shape).dump() +
                                ", asked for " + dtype + " of " +
                                nlohmann::json(target.global_shape).dump());
        }
        if (s.offsets == target.offsets && s.sizes == sizes) exact[i] = &s;
      }
      same &= exact[i] != nullptr;
    }
    // Several tensors in flight (their reads' latency overlaps, on disk and on S3, and so do
    // the checksums and copies of resharded ones): an exact part's bytes as they are, else
    // the target assembled from the parts that overlap it.
    std::vector<std::string> read(exact.size());
    std::vector<int64_t> read_bytes(exact.size(), 0);
    detail::parallel_for(exact.size(), static_cast<size_t>(std::max(1, o_.s3.parallel_parts)),
                         [&](size_t i) {
                           if (exact[i]) {
                             read[i] = detail::read_part(*durable_, dir, *exact[i]);
                             read_bytes[i] = exact[i]->nbytes;
                           } else {
                             const auto& target = state.tensors()[i];
                             read[i] = read_resharded(dir, by_name.at(target.name), target,
                                                      read_bytes[i]);
                           }
                         });
    for (size_t i = 0; i < exact.size(); ++i) {
      out.tensors.push_back(std::move(read[i]));
      bytes += read_bytes[i];
    }
    load_durable_extras(m, dir, saved_world, out);
    out.result = RestoreResult{step, "durable", bytes, !same};
    return true;
  } catch (const std::exception& e) {
    errors += "\n  " + where + ": " + e.what();
    return false;
  }
}

std::optional<RestoreResult> CheckpointEngine::Impl::restore_durable(StateDict& state,
                                                                     std::string& errors) {
  // Rank 0 lists; everyone tries the same steps, newest first, and moves on together.
  std::vector<int64_t> steps = comm_->rank() == 0 ? durable_steps() : std::vector<int64_t>{};
  at::Tensor n = at::full({1}, static_cast<int64_t>(steps.size()), at::kLong);
  comm_->broadcast(n, 0);
  at::Tensor list = at::empty({std::max<int64_t>(1, n.item<int64_t>())}, at::kLong);
  for (size_t k = 0; k < steps.size(); ++k) list[k] = steps[k];
  comm_->broadcast(list, 0);
  for (int64_t k = 0; k < n.item<int64_t>(); ++k) {
    const int64_t step = list[k].item<int64_t>();
    // Every rank stages the step; the tensors are written only when all ranks have it whole.
    Staged staged;
    const bool ok = load_durable(step, state, errors, staged);
    const std::vector<int> failed = failed_ranks(ok);
    if (failed.empty()) {
      for (size_t k = 0; k < staged.tensors.size(); ++k) {
        fill_tensor(state.tensors()[k].tensor, staged.tensors[k].data());
      }
      restore_extras(state, staged.ints, staged.blobs);
      return staged.result;
    }
    errors += not_intact("durable tier: step " + std::to_string(step), failed);
    log(LogLevel::kWarning, "checkpoint: durable step " + std::to_string(step) +
                                " could not be restored on every rank; trying an older one" +
                                errors);
  }
  return std::nullopt;
}

}  // namespace tenax
