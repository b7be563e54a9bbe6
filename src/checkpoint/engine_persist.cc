// The durable tier: the persister thread takes the newest committed step due for persistence,
// copies this rank's share out of its slot (releasing the slot), uploads it, and the last rank
// to finish writes the manifest that commits the step; retention follows.

#include <algorithm>
#include <optional>
#include <tuple>

#include "checkpoint/durable_layout.h"
#include "checkpoint/engine_impl.h"
#include "checkpoint/engine_metrics.h"
#include "checkpoint/parallel_for.h"
#include "tenax/core/wait_clock.h"
#include "tenax/core/logging.h"
#include "tenax/core/phase.h"

namespace tenax {
namespace {

std::string part_key(const detail::ShardRecord& s) {
  std::string k = s.name + "@";
  for (int64_t o : s.offsets) k += std::to_string(o) + ",";
  return k;
}

}  // namespace

void CheckpointEngine::Impl::persist_loop() {
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
    auto& m = detail::checkpoint_metrics();
    for (;;) {
      try {
        const auto began = std::chrono::steady_clock::now();
        PhaseScope persisting(Phase::kPersist);  // a hang watch's clock of this persist
        if (!upload) upload = copy_out(job);  // releases the slot
        {
          // Transfers to S3 wait on the service, each request bounded by its own timeout and
          // retried: a hang watch leaves them alone. A directory's writes stay watched.
          std::optional<WaitMark> remote;
          if (o_.durable.rfind("s3://", 0) == 0) remote.emplace();
          persist(*upload);
        }
        m.seconds[m.kDurable]->inc(
            std::chrono::duration<double>(std::chrono::steady_clock::now() - began).count());
        for (const auto& obj : upload->objects) {
          m.bytes[m.kDurable]->inc(static_cast<double>(obj.second.size()));
        }
        std::lock_guard<std::mutex> lock(mu_);
        last_persisted_ = job.step;
        m.last_durable_step->set(static_cast<double>(job.step));
        m.persistence_lag->set(static_cast<double>(last_saved_ - job.step));
        if (last_error_.find("step " + std::to_string(job.step) + ":") != std::string::npos) {
          last_error_.clear();
        }
        break;
      } catch (const std::exception& e) {
        m.failures[m.kDurable]->inc();
        m.retries->inc();
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

// Copies this rank's parts out of the slot (each part is taken by the first rank to claim
// it, so replicated parts are stored once) and releases the slot. The object buffers of the
// previous persist are reused: their pages are already touched (copying into fresh pages
// costs several times the copy itself).
CheckpointEngine::Impl::Upload CheckpointEngine::Impl::copy_out(const Job& job) {
  const Layout& l = job.layout;
  const char* data = memory_.region(job.slot).data();
  const int rank = comm_->rank();
  const std::string file = rank_file(rank);
  Store& st = *persist_store_;
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
void CheckpointEngine::Impl::recycle(Upload& up) {
  for (auto& [name, bytes] : up.objects) {
    bytes.clear();
    spare_.push_back(std::move(bytes));
  }
  up.objects.clear();
}

// Uploads the objects and, when this rank is the last to finish, writes the manifest that
// commits the step; then applies retention.
void CheckpointEngine::Impl::persist(const Upload& up) {
  const int rank = comm_->rank(), world = comm_->size();
  const std::string dir = step_dir(o_.run, up.step);
  Store& st = *persist_store_;
  const auto& objects = up.objects;
  detail::parallel_for(objects.size(), static_cast<size_t>(std::max(1, o_.s3.parallel_parts)),
                       [&](size_t k) {
                         durable_->put(dir + "/" + objects[k].first, objects[k].second.data(),
                                       objects[k].second.size());
                       });
  const std::string skey = prefix_ + "s" + std::to_string(up.step) + "/";
  st.set(
      skey + "rank/" + std::to_string(rank),
      nlohmann::json{{"rank", rank}, {"tensors", up.shards}, {"blobs", up.blobs}, {"ints", up.ints}}
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
  nlohmann::json manifest = {{"format", "tenax-checkpoint-1"},
                             {"run", o_.run},
                             {"step", up.step},
                             {"world", world},
                             {"tensors", all},
                             {"ranks", ranks}};
  const std::string text = manifest.dump(1);
  durable_->put(dir + "/manifest.json", text.data(), text.size());
  apply_retention();
}

void CheckpointEngine::Impl::apply_retention() {
  auto steps = durable_steps();
  for (size_t i = o_.keep_durable; i < steps.size(); ++i) {
    const std::string dir = step_dir(o_.run, steps[i]);
    durable_->remove(dir + "/manifest.json");  // uncommit first, then the parts
    for (const auto& key : durable_->list(dir + "/")) durable_->remove(key);
  }
}

}  // namespace tenax
