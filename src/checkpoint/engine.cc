// The checkpoint engine: construction, save() into a memory slot, and the committer thread that
// checksums and commits each saved slot, then hands it to the replicator and the persister.

#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <random>

#include "checkpoint/crc32c.h"
#include "checkpoint/engine_impl.h"
#include "checkpoint/engine_metrics.h"
#include "checkpoint/replica_placement.h"
#include "tenax/comm/init.h"
#include "tenax/core/config.h"
#include "tenax/core/error.h"
#include "tenax/core/logging.h"

namespace tenax {
namespace {

// Background threads yield the CPU to training. The commit (the checksums a following save may
// wait for) and replication run at nice 10; persistence, which nothing waits for, at nice 19,
// so its writers (and the threads they start, which inherit it) never slow a commit.
constexpr int kCommitNice = 10, kPersistNice = 19;
void background_priority(int nice) {
  ::setpriority(PRIO_PROCESS, static_cast<id_t>(::syscall(SYS_gettid)), nice);
}

}  // namespace

CheckpointEngine::Impl::Impl(CheckpointOptions o, std::shared_ptr<Communicator> comm,
                             std::shared_ptr<Store> store)
    : o_(std::move(o)),
      comm_(std::move(comm)),
      store_(std::move(store)),
      member_(o_.member.empty() ? "r" + std::to_string(comm_->rank()) : o_.member),
      memory_(o_.run, member_, o_.memory_slots, o_.memory_budget_bytes),
      pinned_(o_.memory_slots, 0),
      busy_(o_.memory_slots, false) {
  if (o_.run.empty() || o_.run.find('/') != std::string::npos) {
    throw ConfigError("checkpoint: run name '" + o_.run + "' must be non-empty without '/'");
  }
  if (o_.persist_every < 1 || o_.keep_durable < 1 || o_.replicate_every < 1) {
    throw ConfigError(
        "checkpoint: persist_every, replicate_every and keep_durable must be "
        "at least 1");
  }
  if (o_.timeout.count() <= 0) o_.timeout = kDefaultTimeout;
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
    peer_offset_ = replica_offset();
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

namespace {

// Host names travel as fixed 64-byte records of an all-gather.
constexpr int64_t kHostBytes = 64;

std::vector<std::string> all_hosts(Communicator& comm) {
  char name[kHostBytes] = {0};
  ::gethostname(name, sizeof(name) - 1);
  at::Tensor mine = at::full({kHostBytes}, 0, at::kByte);
  std::memcpy(mine.data_ptr(), name, std::strlen(name));
  at::Tensor all = at::full({comm.size() * kHostBytes}, 0, at::kByte);
  comm.all_gather(all, mine);
  std::vector<std::string> hosts;
  for (int r = 0; r < comm.size(); ++r) {
    const char* p = static_cast<const char*>(all.data_ptr()) + r * kHostBytes;
    hosts.emplace_back(p, strnlen(p, kHostBytes));
  }
  return hosts;
}

}  // namespace

int CheckpointEngine::Impl::replica_offset() {
  const int world = comm_->size();
  if (o_.peer_offset > 0 && o_.peer_offset % world != 0) return o_.peer_offset % world;
  const int preferred = launch_info().local_size;
  const std::vector<std::string> hosts = all_hosts(*comm_);
  const auto shift = detail::replica_shift(hosts, preferred);
  if (comm_->rank() == 0 && std::count(hosts.begin(), hosts.end(), hosts[0]) < world) {
    std::string by_rank;
    for (const auto& h : hosts) by_rank += " " + h;
    if (shift) {
      log(LogLevel::kInfo, "checkpoint '" + o_.run + "': replicas at rank + " +
                               std::to_string(*shift) + ", each on another host; hosts by rank:" +
                               by_rank);
    } else {
      log(LogLevel::kWarning, "checkpoint '" + o_.run + "': no placement puts every replica on "
                              "another host (hosts by rank:" + by_rank + "); a host's crash "
                              "may lose a snapshot and its replica");
    }
  }
  if (shift) return *shift;
  return preferred > 0 && preferred % world != 0 ? preferred % world : 1;
}

CheckpointEngine::Impl::~Impl() {
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

void CheckpointEngine::Impl::save(int64_t step, const StateDict& state, bool persist_now) {
  const auto began = std::chrono::steady_clock::now();
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
                            ": no memory slot freed within " + std::to_string(o_.timeout.count()) +
                            " ms (all " + std::to_string(o_.memory_slots) +
                            " held by persistence)");
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
  auto& m = detail::checkpoint_metrics();
  m.save_stall->observe(
      std::chrono::duration<double>(std::chrono::steady_clock::now() - began).count());
  m.last_saved_step->set(static_cast<double>(step));
  if (durable_)
    m.persistence_lag->set(static_cast<double>(step - std::max<int64_t>(last_persisted_, 0)));
  // Every rank saves the same steps, so every rank replicates the same ones: the exchanges
  // pair up.
  commits_.push_back({slot, step, std::move(layout),
                      durable_ != nullptr && (persist_now || saves_ % o_.persist_every == 0),
                      (saves_ - 1) % o_.replicate_every == 0});
  cv_.notify_all();
}

void CheckpointEngine::Impl::wait(Ms timeout) {
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

CheckpointStatus CheckpointEngine::Impl::status() const {
  std::lock_guard<std::mutex> lock(mu_);
  CheckpointStatus s;
  s.last_saved = last_committed_;
  s.last_persisted = last_persisted_;
  s.pending_persist = pending_persist_;
  s.last_error = last_error_;
  return s;
}

// The slot to write next: one neither pinned by persistence nor being written, preferring
// the empty, then the oldest. Caller holds mu_.
int CheckpointEngine::Impl::free_slot() {
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
    log(LogLevel::kWarning,
        "checkpoint: rank " + std::to_string(comm_->rank()) + ": skipping the persist of step " +
            std::to_string(persist_next_->step) + " (the durable tier is behind)");
  } else {
    return best;
  }
  --pinned_[persist_next_->slot];
  persist_next_.reset();
  return pick_slot();
}

int CheckpointEngine::Impl::pick_slot() {
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

void CheckpointEngine::Impl::commit_loop() {
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
    const auto began = std::chrono::steady_clock::now();
    detail::compute_crcs(job.layout, memory_.region(job.slot).data());
    memory_.commit(job.slot, detail::to_json(job.layout).dump());
    auto& m = detail::checkpoint_metrics();
    m.seconds[m.kMemory]->inc(
        std::chrono::duration<double>(std::chrono::steady_clock::now() - began).count());
    m.bytes[m.kMemory]->inc(static_cast<double>(job.layout.data_bytes));
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
        log(LogLevel::kDebug, "checkpoint: step " + std::to_string(job.step) + " replaces step " +
                                  std::to_string(persist_next_->step) + " in the persist queue");
      }
      ++pinned_[job.slot];
      persist_next_ = std::move(job);
    }
    cv_.notify_all();
  }
}

CheckpointEngine::CheckpointEngine(CheckpointOptions options, std::shared_ptr<Communicator> comm,
                                   std::shared_ptr<Store> store)
    : impl_(std::make_unique<Impl>(std::move(options), std::move(comm), std::move(store))) {}
CheckpointEngine::~CheckpointEngine() = default;
void CheckpointEngine::save(int64_t step, const StateDict& state, bool persist_now) {
  impl_->save(step, state, persist_now);
}
void CheckpointEngine::wait(Ms timeout) { impl_->wait(timeout); }
std::optional<RestoreResult> CheckpointEngine::restore(StateDict& state) {
  return impl_->restore(state);
}
CheckpointStatus CheckpointEngine::status() const { return impl_->status(); }

std::string CheckpointEngine::check_durable(const CheckpointOptions& options) {
  if (options.durable.empty()) return "";
  try {
    detail::open_object_store(options.durable, options.s3)->check();
    return "";
  } catch (const std::exception& e) {
    return e.what();
  }
}
void CheckpointEngine::remove_memory(const std::string& run) {
  detail::MemoryTier::remove_all(run);
}

}  // namespace tenax
