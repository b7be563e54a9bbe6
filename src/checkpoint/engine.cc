#include "tenax/checkpoint/engine.h"

#include <ATen/ops/empty.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <ATen/ops/full.h>

#include <algorithm>
#include <atomic>
#include <tuple>
#include <condition_variable>
#include <cstring>
#include <cstdio>
#include <deque>
#include <map>
#include <mutex>
#include <random>
#include <set>
#include <thread>

#include "checkpoint/aligned_buffer.h"
#include "checkpoint/crc32c.h"
#include "checkpoint/durable_layout.h"
#include "checkpoint/parallel_for.h"
#include "checkpoint/memory_tier.h"
#include "checkpoint/object_store.h"
#include "checkpoint/snapshot.h"
#include "tenax/core/config.h"
#include "tenax/core/error.h"
#include "tenax/core/logging.h"

namespace tenax {

using detail::byte_view;
using detail::fill_tensor;
using detail::Layout;
using detail::rank_file;
using detail::step_dir;
using Ms = std::chrono::milliseconds;

namespace {

std::string part_key(const detail::ShardRecord& s) {
  std::string k = s.name + "@";
  for (int64_t o : s.offsets) k += std::to_string(o) + ",";
  return k;
}

// Background threads yield the CPU to training. The commit (the checksums a following save may
// wait for) and replication run at nice 10; persistence, which nothing waits for, at nice 19,
// so its writers (and the threads they start, which inherit it) never slow a commit.
constexpr int kCommitNice = 10, kPersistNice = 19;
void background_priority(int nice) {
  ::setpriority(PRIO_PROCESS, static_cast<id_t>(::syscall(SYS_gettid)), nice);
}

}  // namespace

class CheckpointEngine::Impl {
 public:
  struct Job {
    int slot;
    int64_t step;
    Layout layout;
    bool persist;
    bool replicate = true;
  };

  Impl(CheckpointOptions o, std::shared_ptr<Communicator> comm, std::shared_ptr<TcpStore> store)
      : o_(std::move(o)), comm_(std::move(comm)), store_(std::move(store)),
        member_(o_.member.empty() ? "r" + std::to_string(comm_->rank()) : o_.member),
        memory_(o_.run, member_, o_.memory_slots, o_.memory_budget_bytes),
        pinned_(o_.memory_slots, 0), busy_(o_.memory_slots, false) {
    if (o_.run.empty() || o_.run.find('/') != std::string::npos) {
      throw ConfigError("checkpoint: run name '" + o_.run + "' must be non-empty without '/'");
    }
    if (o_.persist_every < 1 || o_.keep_durable < 1 || o_.replicate_every < 1) {
      throw ConfigError("checkpoint: persist_every, replicate_every and keep_durable must be "
                        "at least 1");
    }
    if (o_.timeout.count() <= 0) o_.timeout = default_timeout();
    if (!o_.durable.empty()) {
      durable_ = detail::open_object_store(o_.durable, o_.s3);
      durable_->check();
    }
    // An id for this engine instance: store keys of an earlier run of the same name never mix
    // with ours.
    at::Tensor id = at::full({1}, 0, at::kLong);
    if (comm_->rank() == 0) id.fill_(static_cast<int64_t>(std::random_device{}() & 0x7fffffff));
    comm_->broadcast(id, 0);
    prefix_ = "ckpt/" + o_.run + "/" + std::to_string(id.item<int64_t>()) + "/";
    if (o_.peer && comm_->size() > 1) {
      const int world = comm_->size();
      int offset = o_.peer_offset;
      if (offset <= 0) {
        offset = static_cast<int>(env_int("LOCAL_WORLD_SIZE",
                                          env_int("OMPI_COMM_WORLD_LOCAL_SIZE", 1)));
      }
      if (offset <= 0 || offset % world == 0) offset = 1;
      peer_offset_ = offset % world;
      peer_dst_ = (comm_->rank() + peer_offset_) % world;
      peer_src_ = (comm_->rank() - peer_offset_ + world) % world;
      // A communicator of its own: replication never queues behind training's collectives.
      peer_comm_ = comm_->split(0, comm_->rank());
      replicas_ = std::make_unique<detail::MemoryTier>(o_.run, member_, o_.memory_slots,
                                                       o_.memory_budget_bytes, 'p');
      replicator_ = std::thread([this] {
        background_priority(kCommitNice);
        replicate_loop();
      });
    }
    committer_ = std::thread([this] {
      background_priority(kCommitNice);
      commit_loop();
    });
    if (durable_) {
      persist_store_ = store_->clone();
      persister_ = std::thread([this] {
        background_priority(kPersistNice);
        persist_loop();
      });
    }
  }

  ~Impl() {
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait_for(lock, o_.timeout, [&] {
        return commits_.empty() && !committing_ && replications_.empty() && !replicating_;
      });
      stopping_ = true;
      cv_.notify_all();
    }
    committer_.join();
    if (replicator_.joinable()) {
      {
        std::lock_guard<std::mutex> lock(mu_);
        if (replicating_) peer_comm_->abort("checkpoint engine closing");
      }
      replicator_.join();
    }
    if (persister_.joinable()) {
      persist_store_->interrupt();
      persister_.join();
    }
  }

  void save(int64_t step, const StateDict& state) {
    Layout layout = detail::plan(state);
    layout.run = o_.run;
    layout.step = step;
    layout.rank = comm_->rank();
    layout.world = comm_->size();
    layout.member = member_;
    layout.generation = o_.generation;
    int slot = -1;
    {
      std::unique_lock<std::mutex> lock(mu_);
      if (step <= last_saved_) {
        throw ConfigError("checkpoint: save(" + std::to_string(step) + ") after step " +
                          std::to_string(last_saved_) + ": steps must increase");
      }
      const bool ok = cv_.wait_for(lock, o_.timeout, [&] {
        slot = free_slot();
        return slot >= 0;
      });
      if (!ok) {
        throw CheckpointError("checkpoint: rank " + std::to_string(comm_->rank()) +
                              ": no memory slot freed within " +
                              std::to_string(o_.timeout.count()) + " ms (all " +
                              std::to_string(o_.memory_slots) + " held by persistence)");
      }
      busy_[slot] = true;
    }
    try {
      const uint64_t json_room = detail::to_json(layout).dump().size() + 64 * layout.shards.size() +
                                 64 * layout.blobs.size() + 4096;
      memory_.prepare(slot, step, layout.data_bytes, json_room);
      detail::copy_into(state, layout, memory_.region(slot).data());
    } catch (...) {
      std::lock_guard<std::mutex> lock(mu_);
      busy_[slot] = false;
      cv_.notify_all();
      throw;
    }
    std::lock_guard<std::mutex> lock(mu_);
    last_saved_ = step;
    ++saves_;
    // Every rank saves the same steps, so every rank replicates the same ones: the exchanges
    // pair up.
    commits_.push_back({slot, step, std::move(layout),
                        durable_ != nullptr && saves_ % o_.persist_every == 0,
                        (saves_ - 1) % o_.replicate_every == 0});
    cv_.notify_all();
  }

  void wait(Ms timeout) {
    std::unique_lock<std::mutex> lock(mu_);
    const bool done = cv_.wait_for(lock, timeout, [&] {
      return commits_.empty() && !committing_ && !persist_next_ && !persisting_ &&
             replications_.empty() && !replicating_;
    });
    if (!done) {
      throw TimeoutError("checkpoint: background work still running after " +
                         std::to_string(timeout.count()) + " ms (pending persist of step " +
                         std::to_string(pending_persist_) + ": " + last_error_ + ")");
    }
  }

  CheckpointStatus status() const {
    std::lock_guard<std::mutex> lock(mu_);
    CheckpointStatus s;
    s.last_saved = last_committed_;
    s.last_persisted = last_persisted_;
    s.pending_persist = pending_persist_;
    s.last_error = last_error_;
    return s;
  }

  std::optional<RestoreResult> restore(StateDict& state) {
    {  // every save so far committed in memory (persistence may go on)
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait_for(lock, o_.timeout, [&] { return commits_.empty() && !committing_; });
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

 private:
  // The slot to write next: one neither pinned by persistence nor being written, preferring
  // the empty, then the oldest. Caller holds mu_.
  int free_slot() {
    int best = pick_slot();
    if (best >= 0 || !persist_next_) return best;
    bool committing = false;  // a slot that frees itself once its commit is done
    for (int s = 0; s < o_.memory_slots; ++s) committing |= busy_[s] && pinned_[s] == 0;
    // A newer step due for persistence, in or waiting for its commit, replaces the waiting
    // persist as soon as it commits: give that persist up now instead of waiting for the commit.
    bool replaced = committing_persist_;
    for (const Job& j : commits_) replaced |= j.persist;
    if (replaced) {
      log(LogLevel::kDebug, "checkpoint: step " + std::to_string(persist_next_->step) +
                                " leaves the persist queue to a newer step");
    } else if (!committing) {
      // Every slot is held: give up the persist that has not started rather than stall
      // training; a newer step will be persisted instead.
      log(LogLevel::kWarning, "checkpoint: rank " + std::to_string(comm_->rank()) +
                                  ": skipping the persist of step " +
                                  std::to_string(persist_next_->step) +
                                  " (the durable tier is behind)");
    } else {
      return best;
    }
    --pinned_[persist_next_->slot];
    persist_next_.reset();
    return pick_slot();
  }

  int pick_slot() {
    int best = -1;
    int64_t best_step = 0;
    for (int s = 0; s < o_.memory_slots; ++s) {
      if (pinned_[s] > 0 || busy_[s]) continue;
      auto& r = memory_.region(s);
      const int64_t step = r.capacity() == 0 ? -2 : r.header()->step;
      if (best < 0 || step < best_step) best = s, best_step = step;
    }
    return best;
  }

  void commit_loop() {
    for (;;) {
      Job job;
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [&] { return stopping_ || !commits_.empty(); });
        if (commits_.empty()) return;
        job = std::move(commits_.front());
        commits_.pop_front();
        committing_ = true;
        committing_persist_ = job.persist;
      }
      detail::compute_crcs(job.layout, memory_.region(job.slot).data());
      memory_.commit(job.slot, detail::to_json(job.layout).dump());
      std::lock_guard<std::mutex> lock(mu_);
      committing_ = false;
      committing_persist_ = false;
      busy_[job.slot] = false;
      last_committed_ = job.step;
      if (replicas_ && job.replicate) {
        ++pinned_[job.slot];
        replications_.push_back({job.slot, job.step});
      }
      if (job.persist) {
        // Only the newest due step waits for the persister; an older one it has not started
        // is dropped (its slot freed), so a slow durable tier never stalls training.
        if (persist_next_) {
          --pinned_[persist_next_->slot];
          log(LogLevel::kDebug, "checkpoint: step " + std::to_string(job.step) +
                                    " replaces step " + std::to_string(persist_next_->step) +
                                    " in the persist queue");
        }
        ++pinned_[job.slot];
        persist_next_ = std::move(job);
      }
      cv_.notify_all();
    }
  }

  // Sends every committed snapshot to the peer and receives the source rank's into a replica
  // slot, in commit order (every rank commits the same steps, so the exchanges pair up).
  void replicate_loop() {
    for (;;) {
      std::pair<int, int64_t> job;
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [&] { return stopping_ || !replications_.empty(); });
        if (replications_.empty()) return;
        job = replications_.front();
        replications_.pop_front();
        replicating_ = !peer_broken_;
      }
      if (!peer_broken_) {
        try {
          exchange(job.first);
        } catch (const std::exception& e) {
          std::lock_guard<std::mutex> lock(mu_);
          peer_broken_ = true;
          last_error_ = "peer replication of step " + std::to_string(job.second) + ": " + e.what();
          log(LogLevel::kWarning, "checkpoint: rank " + std::to_string(comm_->rank()) + ": " +
                                      last_error_ + "; the peer tier is off for this engine");
        }
      }
      std::lock_guard<std::mutex> lock(mu_);
      --pinned_[job.first];
      replicating_ = false;
      cv_.notify_all();
    }
  }

  void exchange(int slot) {
    detail::Region& mine = memory_.region(slot);
    const auto* h = mine.header();
    at::Tensor out = at::full({3}, 0, at::kLong), in = at::full({3}, 0, at::kLong);
    out[0] = h->step;
    out[1] = static_cast<int64_t>(h->data_bytes);
    out[2] = static_cast<int64_t>(h->json_bytes);
    auto sent = peer_comm_->send_async(out, peer_dst_, kPeerHeader);
    peer_comm_->recv(in, peer_src_, kPeerHeader);
    sent->wait();
    const int64_t step = in[0].item<int64_t>(), data_bytes = in[1].item<int64_t>(),
                  json_bytes = in[2].item<int64_t>();
    // The replica slot to overwrite: the empty or the oldest.
    int rslot = 0;
    for (int s = 1; s < replicas_->slots(); ++s) {
      auto step_of = [&](int k) {
        auto& r = replicas_->region(k);
        return r.capacity() == 0 ? int64_t(-2) : r.header()->step;
      };
      if (step_of(s) < step_of(rslot)) rslot = s;
    }
    replicas_->prepare(rslot, step, static_cast<uint64_t>(data_bytes),
                       static_cast<uint64_t>(json_bytes) + 4096);
    std::string json(static_cast<size_t>(json_bytes), '\0');
    std::vector<WorkHandle> sends;
    if (h->data_bytes > 0) {
      sends.push_back(peer_comm_->send_async(byte_view(mine.data(), h->data_bytes), peer_dst_, kPeerData));
    }
    if (h->json_bytes > 0) {
      sends.push_back(peer_comm_->send_async(byte_view(mine.json(), h->json_bytes), peer_dst_, kPeerJson));
    }
    if (data_bytes > 0) {
      peer_comm_->recv(byte_view(replicas_->region(rslot).data(), data_bytes), peer_src_, kPeerData);
    }
    if (json_bytes > 0) peer_comm_->recv(byte_view(json.data(), json_bytes), peer_src_, kPeerJson);
    for (auto& w : sends) w->wait();
    replicas_->commit(rslot, json);
  }

  void persist_loop() {
    for (;;) {
      Job job;
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [&] { return stopping_ || persist_next_.has_value(); });
        if (stopping_) return;
        job = std::move(*persist_next_);
        persist_next_.reset();
        persisting_ = true;
        pending_persist_ = job.step;
      }
      Ms backoff = o_.s3.backoff;
      std::optional<Upload> upload;
      for (;;) {
        try {
          if (!upload) upload = copy_out(job);  // releases the slot
          persist(*upload);
          std::lock_guard<std::mutex> lock(mu_);
          last_persisted_ = job.step;
          if (last_error_.find("step " + std::to_string(job.step) + ":") != std::string::npos) {
            last_error_.clear();
          }
          break;
        } catch (const std::exception& e) {
          std::unique_lock<std::mutex> lock(mu_);
          last_error_ = "persist of step " + std::to_string(job.step) + ": " + e.what();
          log(LogLevel::kWarning, "checkpoint: rank " + std::to_string(comm_->rank()) + ": " +
                                      last_error_ + "; retrying in " +
                                      std::to_string(backoff.count()) + " ms");
          cv_.wait_for(lock, backoff, [&] { return stopping_ || persist_next_.has_value(); });
          if (stopping_ || persist_next_) break;  // a newer step replaces this one
          backoff = std::min<Ms>(backoff * 2, Ms(10000));
        }
      }
      if (upload) recycle(*upload);
      std::lock_guard<std::mutex> lock(mu_);
      if (!upload) --pinned_[job.slot];  // never copied out
      persisting_ = false;
      pending_persist_ = -1;
      cv_.notify_all();
    }
  }

  // A rank's share of a persisted step, out of its slot: objects of about part_bytes each and
  // the records of the parts and blobs in them.
  struct Upload {
    int64_t step;
    std::map<std::string, int64_t> ints;
    std::vector<std::pair<std::string, detail::AlignedBuffer>> objects;  // name, bytes
    nlohmann::json shards = nlohmann::json::array(), blobs = nlohmann::json::array();
  };

  // Copies this rank's parts out of the slot (each part is taken by the first rank to claim
  // it, so replicated parts are stored once) and releases the slot. The object buffers of the
  // previous persist are reused: their pages are already touched (copying into fresh pages
  // costs several times the copy itself).
  Upload copy_out(const Job& job) {
    const Layout& l = job.layout;
    const char* data = memory_.region(job.slot).data();
    const int rank = comm_->rank();
    const std::string file = rank_file(rank);
    TcpStore& st = *persist_store_;
    Upload up;
    up.step = job.step;
    up.ints = l.ints;
    // Objects of about part_bytes each (a larger part gets its own object, uploaded in parts
    // by the S3 tier), uploaded several at a time.
    auto& objects = up.objects;
    std::vector<int64_t> sizes;
    struct Piece {
      size_t object;
      const char* src;
      int64_t n;
    };
    std::vector<Piece> pieces;
    auto place = [&](const char* src, int64_t nbytes) -> std::pair<std::string, int64_t> {
      if (sizes.empty() || (sizes.back() > 0 && sizes.back() + nbytes > o_.s3.part_bytes)) {
        detail::AlignedBuffer buf;
        if (!spare_.empty()) {
          buf = std::move(spare_.back());
          spare_.pop_back();
        }
        objects.emplace_back(objects.empty() ? file
                                             : file.substr(0, file.size() - 4) + "-" +
                                                   std::to_string(objects.size()) + ".bin",
                             std::move(buf));
        sizes.push_back(0);
      }
      pieces.push_back({objects.size() - 1, src, nbytes});
      sizes.back() += nbytes;
      return {objects.back().first, sizes.back() - nbytes};
    };
    for (const auto& s : l.shards) {
      const std::string key = prefix_ + "owner/" + part_key(s);
      std::string owner;
      {
        auto it = owners_.find(key);
        if (it == owners_.end()) {
          owner = st.compare_set(key, "", std::to_string(rank));
          owners_[key] = owner;
        } else {
          owner = it->second;
        }
      }
      if (owner != std::to_string(rank)) continue;
      detail::ShardRecord r = s;
      std::tie(r.file, r.offset) = place(data + s.offset, s.nbytes);
      up.shards.push_back(detail::to_json(r));
    }
    for (const auto& b : l.blobs) {
      detail::BlobRecord r = b;
      std::tie(r.file, r.offset) = place(data + b.offset, b.nbytes);
      up.blobs.push_back(detail::to_json(r));
    }
    // One thread: this runs beside training, and into touched pages one copy is cheap. Each
    // object's pieces are back to back, so appending them in order fills it.
    for (size_t k = 0; k < objects.size(); ++k) objects[k].second.reserve(sizes[k]);
    for (const Piece& p : pieces) objects[p.object].second.append(p.src, p.n);
    std::lock_guard<std::mutex> lock(mu_);
    --pinned_[job.slot];
    cv_.notify_all();
    return up;
  }

  // Keeps an upload's object buffers (and their touched pages) for the next copy_out.
  void recycle(Upload& up) {
    for (auto& [name, bytes] : up.objects) {
      bytes.clear();
      spare_.push_back(std::move(bytes));
    }
    up.objects.clear();
  }

  // Uploads the objects and, when this rank is the last to finish, writes the manifest that
  // commits the step; then applies retention.
  void persist(const Upload& up) {
    const int rank = comm_->rank(), world = comm_->size();
    const std::string dir = step_dir(o_.run, up.step);
    TcpStore& st = *persist_store_;
    const auto& objects = up.objects;
    detail::parallel_for(objects.size(), static_cast<size_t>(std::max(1, o_.s3.parallel_parts)),
                         [&](size_t k) {
                           durable_->put(dir + "/" + objects[k].first, objects[k].second.data(),
                                         objects[k].second.size());
                         });
    const std::string skey = prefix_ + "s" + std::to_string(up.step) + "/";
    st.set(skey + "rank/" + std::to_string(rank),
           nlohmann::json{{"rank", rank}, {"tensors", up.shards}, {"blobs", up.blobs},
                          {"ints", up.ints}}
               .dump());
    if (st.add(skey + "done", 1) != world) return;
    // Last one in: every rank's parts are durable; write the manifest that commits the step.
    nlohmann::json all = nlohmann::json::array(), ranks = nlohmann::json::array();
    for (int r = 0; r < world; ++r) {
      auto j = nlohmann::json::parse(st.get(skey + "rank/" + std::to_string(r)));
      for (auto& t : j["tensors"]) all.push_back(t);
      ranks.push_back({{"rank", r}, {"ints", j["ints"]}, {"blobs", j["blobs"]}});
      st.delete_key(skey + "rank/" + std::to_string(r));
    }
    st.delete_key(skey + "done");
    nlohmann::json manifest = {{"format", "tenax-checkpoint-1"}, {"run", o_.run},
                               {"step", up.step},                {"world", world},
                               {"tensors", all},                 {"ranks", ranks}};
    const std::string text = manifest.dump(1);
    durable_->put(dir + "/manifest.json", text.data(), text.size());
    apply_retention();
  }

  std::vector<int64_t> durable_steps() { return detail::durable_steps(*durable_, o_.run); }

  void apply_retention() {
    auto steps = durable_steps();
    for (size_t i = o_.keep_durable; i < steps.size(); ++i) {
      const std::string dir = step_dir(o_.run, steps[i]);
      durable_->remove(dir + "/manifest.json");  // uncommit first, then the parts
      for (const auto& key : durable_->list(dir + "/")) durable_->remove(key);
    }
  }

  // Collective: the ranks whose `ok` is false, the same list on every rank.
  std::vector<int> failed_ranks(bool ok) {
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
  static std::string not_intact(const std::string& what, const std::vector<int>& ranks) {
    std::string line = "\n  " + what + " is not intact on rank" + (ranks.size() > 1 ? "s " : " ");
    for (size_t k = 0; k < ranks.size(); ++k) line += (k ? ", " : "") + std::to_string(ranks[k]);
    return line;
  }

  void restore_extras(StateDict& state, const std::map<std::string, int64_t>& ints,
                      const std::map<std::string, std::string>& blobs) {
    for (const auto& [k, v] : ints) state.set_int(k, v);
    for (const auto& [k, v] : blobs) state.set_blob(k, v);
  }

  // The blobs of a verified snapshot, by name.
  static std::map<std::string, std::string> blobs_of(const Layout& layout, const char* data) {
    std::map<std::string, std::string> blobs;
    for (const auto& b : layout.blobs) blobs[b.name] = std::string(data + b.offset, b.nbytes);
    return blobs;
  }

  // Committed snapshots of a memory tier (own or replica) usable for this restore, by step.
  // `rank`: the rank that saved them (this one, or the peer source for replicas).
  std::map<int64_t, std::pair<int, Layout>> usable_snapshots(detail::MemoryTier& tier, int rank,
                                                             const StateDict* state,
                                                             std::string& errors) {
    std::map<int64_t, std::pair<int, Layout>> usable;
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

  // Memory and peer tiers: the newest step that every rank holds itself or that its peer
  // holds a replica of. Ranks without their own copy receive the replica from the peer.
  std::optional<RestoreResult> restore_memory(StateDict& state, std::string& errors) {
    const int slots = o_.memory_slots, rank = comm_->rank(), world = comm_->size();
    auto own = usable_snapshots(memory_, rank, &state, errors);
    std::map<int64_t, std::pair<int, Layout>> held;  // replicas of peer_src_
    if (replicas_) held = usable_snapshots(*replicas_, peer_src_, nullptr, errors);
    at::Tensor mine = at::full({2 * slots}, -1, at::kLong);
    int i = 0;
    for (auto it = own.rbegin(); it != own.rend() && i < slots; ++it) mine[i++] = it->first;
    i = slots;
    for (auto it = held.rbegin(); it != held.rend() && i < 2 * slots; ++it) mine[i++] = it->first;
    at::Tensor all = at::empty({2 * slots * world}, at::kLong);
    comm_->all_gather(all, mine);
    auto has = [&](int r, int64_t step, bool replica) {
      for (int k = 0; k < slots; ++k) {
        if (all[r * 2 * slots + (replica ? slots : 0) + k].item<int64_t>() == step) return true;
      }
      return false;
    };
    std::set<int64_t> candidates;
    for (int64_t k = 0; k < all.numel(); ++k) {
      if (all[k].item<int64_t>() >= 0) candidates.insert(all[k].item<int64_t>());
    }
    for (auto it = candidates.rbegin(); it != candidates.rend(); ++it) {
      const int64_t step = *it;
      std::vector<bool> from_peer(world);
      bool whole = true;
      for (int r = 0; r < world && whole; ++r) {
        from_peer[r] = !has(r, step, false);
        whole = !from_peer[r] || (replicas_ && has((r + peer_offset_) % world, step, true));
      }
      if (!whole) continue;
      // Two attempts: ranks whose own copy fails its checksum take their peer's replica in the
      // second.
      for (int attempt = 0;; ++attempt) {
        // Holders send the replicas their sources lack; everyone else reads its own.
        std::vector<WorkHandle> sends;
        const int64_t kNone = -1;
        if (replicas_ && from_peer[peer_src_]) {
          auto& [slot, layout] = held.at(step);
          auto& r = replicas_->region(slot);
          at::Tensor hdr = at::full({2}, kNone, at::kLong);
          hdr[0] = static_cast<int64_t>(r.header()->data_bytes);
          hdr[1] = static_cast<int64_t>(r.header()->json_bytes);
          sends.push_back(comm_->send_async(hdr, peer_src_, kRestoreHeader));
          sends.push_back(comm_->send_async(
              byte_view(r.data(), hdr[0].item<int64_t>()),
              peer_src_, kRestoreData));
          sends.push_back(comm_->send_async(
              byte_view(r.json(), hdr[1].item<int64_t>()),
              peer_src_, kRestoreJson));
        }
        // Every rank checks its source first and writes into the tensors only once all
        // sources are intact: a step that fails anywhere leaves every rank's tensors as they
        // were for the next tier (or the caller, when no tier has a whole step).
        bool ok = true;
        Layout layout;
        const char* source = nullptr;
        std::vector<char> data;  // a replica received from the peer
        const std::string tier = from_peer[rank] ? "peer" : "memory";
        const std::string where =
            from_peer[rank] ? "peer tier: step " + std::to_string(step) + ", rank " +
                                  std::to_string(rank) + "'s replica on rank " +
                                  std::to_string(peer_dst_)
                            : "memory tier: step " + std::to_string(step) + ", rank " +
                                  std::to_string(rank);
        if (from_peer[rank]) {
          at::Tensor hdr = at::full({2}, kNone, at::kLong);
          comm_->recv(hdr, peer_dst_, kRestoreHeader);
          data.resize(static_cast<size_t>(hdr[0].item<int64_t>()));
          std::string json(static_cast<size_t>(hdr[1].item<int64_t>()), '\0');
          comm_->recv(byte_view(data.data(), int64_t(data.size())),
                      peer_dst_, kRestoreData);
          comm_->recv(byte_view(json.data(), int64_t(json.size())),
                      peer_dst_, kRestoreJson);
          try {
            layout = detail::layout_from_json(nlohmann::json::parse(json), where);
            if (!detail::same_parts(layout, state)) {
              throw CheckpointError("the replica holds other tensor parts than the ones asked for");
            }
            source = data.data();
          } catch (const std::exception& e) {
            errors += "\n  " + where + ": " + e.what();
            ok = false;
          }
        } else {
          auto& [slot, own_layout] = own.at(step);
          layout = own_layout;
          source = memory_.region(slot).data();
        }
        if (ok) {
          const std::string bad = detail::verify_crcs(layout, source, where);
          errors += bad;
          ok = bad.empty();
        }
        for (auto& w : sends) w->wait();
        const std::vector<int> failed = failed_ranks(ok);
        bool all = failed.empty(), retry = attempt == 0;
        for (int r : failed) {
          if (from_peer[r] || !(replicas_ && has((r + peer_offset_) % world, step, true))) {
            retry = false;
          }
          from_peer[r] = true;
        }
        if (all) {
          detail::copy_out_of(layout, source, state);
          restore_extras(state, layout.ints, blobs_of(layout, source));
          int64_t bytes = 0;
          for (const auto& s : layout.shards) bytes += s.nbytes;
          return RestoreResult{step, tier, bytes, false};
        }
        if (!retry) {
          errors += not_intact("memory/peer tier: step " + std::to_string(step), failed);
          log(LogLevel::kWarning, "checkpoint: memory/peer step " + std::to_string(step) +
                                      " is not intact on every rank; trying the next tier" +
                                      errors);
          return std::nullopt;
        }
        log(LogLevel::kWarning, "checkpoint: memory step " + std::to_string(step) +
                                    ": a rank's own copy failed; taking its peer's replica" +
                                    errors);
      }

    }
    return std::nullopt;
  }

  // A durable step read and verified, not yet written into the tensors.
  struct Staged {
    std::vector<std::string> tensors;  // each target tensor's bytes, in state order
    std::map<std::string, int64_t> ints;
    std::map<std::string, std::string> blobs;
    RestoreResult result;
  };

  // Reads every part of the durable step `step` that `state` needs and assembles the target
  // tensors' bytes in `out` (empty on entry), writing nothing into `state`; false (with `errors` saying why)
  // when a part is missing or corrupt.
  bool load_durable(int64_t step, const StateDict& state, std::string& errors, Staged& out) {
    const std::string dir = step_dir(o_.run, step);
    const std::string where = "durable tier " + durable_->describe() + ", step " +
                              std::to_string(step);
    try {
      nlohmann::json m = nlohmann::json::parse(durable_->get(dir + "/manifest.json"));
      if (m.value("run", "") != o_.run || m.value("step", int64_t(-1)) != step) {
        throw CheckpointError("manifest belongs to run '" + m.value("run", "") + "' step " +
                              std::to_string(m.value("step", int64_t(-1))) + ", not run '" +
                              o_.run + "'");
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
      // The exact parts, several reads in flight (their latency overlaps, on disk and on S3).
      std::vector<std::string> read(exact.size());
      detail::parallel_for(exact.size(), static_cast<size_t>(std::max(1, o_.s3.parallel_parts)),
                           [&](size_t i) {
                             if (exact[i]) read[i] = detail::read_part(*durable_, dir, *exact[i]);
                           });
      for (size_t i = 0; i < exact.size(); ++i) {
        const auto& target = state.tensors()[i];
        if (exact[i]) {  // its bytes as they are
          out.tensors.push_back(std::move(read[i]));
          bytes += exact[i]->nbytes;
          continue;
        }
        const auto& saved = by_name.at(target.name);
        const size_t elem = detail::dtype_size(detail::dtype_name(target.tensor));
        const std::vector<int64_t> sizes = target.tensor.sizes().vec();
        // Resharding: the intersection of every overlapping saved part.
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
          covered += detail::copy_overlap(part.data(), s.offsets, s.sizes, buf.data(),
                                          target.offsets, sizes, elem);
        }
        if (covered != target.tensor.numel()) {
          throw CheckpointError("tensor '" + target.name + "': the saved parts cover " +
                                std::to_string(covered) + " of the " +
                                std::to_string(target.tensor.numel()) + " elements asked for");
        }
        out.tensors.push_back(std::move(buf));
      }
      // Ints and blobs: this rank's own when it existed in the saved world, else rank 0's.
      const auto& ranks = m.at("ranks");
      const int from = comm_->rank() < saved_world ? comm_->rank() : 0;
      for (const auto& r : ranks) {
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
      out.result = RestoreResult{step, "durable", bytes, !same};
      return true;
    } catch (const std::exception& e) {
      errors += "\n  " + where + ": " + e.what();
      return false;
    }
  }

  std::optional<RestoreResult> restore_durable(StateDict& state, std::string& errors) {
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

  CheckpointOptions o_;
  std::shared_ptr<Communicator> comm_;
  std::shared_ptr<TcpStore> store_, persist_store_;
  std::string member_;
  detail::MemoryTier memory_;
  std::unique_ptr<detail::ObjectStore> durable_;
  // Peer tier.
  static constexpr uint32_t kPeerHeader = 1, kPeerData = 2, kPeerJson = 3;
  static constexpr uint32_t kRestoreHeader = 0x7e01, kRestoreData = 0x7e02, kRestoreJson = 0x7e03;
  int peer_offset_ = 1, peer_dst_ = 0, peer_src_ = 0;
  std::shared_ptr<Communicator> peer_comm_;
  std::unique_ptr<detail::MemoryTier> replicas_;
  std::deque<std::pair<int, int64_t>> replications_;  // (slot, step) to send
  bool replicating_ = false, peer_broken_ = false;
  std::thread replicator_;
  std::string prefix_;
  std::map<std::string, std::string> owners_;  // persister thread only
  std::vector<detail::AlignedBuffer> spare_;    // persister thread only: buffers for copy_out

  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::vector<int> pinned_;  // holds on each slot: a pending or copying persist, a replication
  std::vector<bool> busy_;
  std::deque<Job> commits_;
  std::optional<Job> persist_next_;
  bool committing_ = false, persisting_ = false, stopping_ = false;
  bool committing_persist_ = false;  // the commit in progress is of a step due for persistence
  int64_t last_saved_ = -1, last_committed_ = -1, last_persisted_ = -1, pending_persist_ = -1;
  int64_t saves_ = 0;
  std::string last_error_;
  std::thread committer_, persister_;
};

CheckpointEngine::CheckpointEngine(CheckpointOptions options, std::shared_ptr<Communicator> comm,
                                   std::shared_ptr<TcpStore> store)
    : impl_(std::make_unique<Impl>(std::move(options), std::move(comm), std::move(store))) {}
CheckpointEngine::~CheckpointEngine() = default;
void CheckpointEngine::save(int64_t step, const StateDict& state) { impl_->save(step, state); }
void CheckpointEngine::wait(Ms timeout) { impl_->wait(timeout); }
std::optional<RestoreResult> CheckpointEngine::restore(StateDict& state) {
  return impl_->restore(state);
}
CheckpointStatus CheckpointEngine::status() const { return impl_->status(); }
void CheckpointEngine::remove_memory(const std::string& run) {
  detail::MemoryTier::remove_all(run);
}

}  // namespace tenax
