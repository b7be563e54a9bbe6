#include "comm/gloo_communicator.h"

#include <gloo/allgather.h>
#include <gloo/allreduce.h>
#include <gloo/alltoall.h>
#include <gloo/alltoallv.h>
#include <gloo/barrier.h>
#include <gloo/broadcast.h>
#include <gloo/reduce.h>
#include <gloo/rendezvous/context.h>
#include <gloo/rendezvous/prefix_store.h>
#include <gloo/transport/tcp/device.h>
#include <gloo/transport/unbound_buffer.h>
#include <gloo/types.h>
#include <ATen/ops/empty_like.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <condition_variable>
#include <deque>
#include <list>
#include <functional>
#include <mutex>
#include <thread>

#include "comm/fault.h"
#include "comm/gloo_store.h"
#include "comm/net.h"
#include "comm/reduce_kernels.h"
#include "comm/shm_allreduce.h"
#include "comm/wait_clock.h"
#include "comm/tensor_checks.h"
#include "tenax/core/config.h"
#include "tenax/core/error.h"
#include "tenax/core/logging.h"

namespace tenax {
namespace {

using Ms = std::chrono::milliseconds;

constexpr uint8_t kReduceScatterSlotPrefix = 0x71;
constexpr uint8_t kP2PSlotPrefix = 0x72;
constexpr uint8_t kDebugCheckSlotPrefix = 0x73;
// Collectives on at least this many bytes always check their arguments across ranks: the
// 32-byte exchange (about 1 ms on 4 ranks of a loaded 2-core host) is a few percent of such an
// operation. Smaller ones check only when TENAX_DEBUG_COLLECTIVES is set.
constexpr int64_t kAlwaysCheckBytes = 16 << 20;
// The ring all-reduce pipelines segments of at most this many bytes (Gloo's default is 1 MiB).
// Larger segments mean fewer wake-ups per byte: on 2 ranks, 16 MiB all-reduces ran at 1.56-1.80
// GB/s with 4 MiB segments against 1.53-1.56 with 1 MiB. Buffers under 2 x ranks x 4 MiB are
// unaffected (a segment is at most 1/(2 x ranks) of the buffer).
constexpr size_t kAllreduceSegmentBytes = 4 << 20;
// How long a rank that saw a broken connection waits for the store to say which peer died.
constexpr Ms kBlameWait{1000};

// Calls f with a value of the C++ storage type of `dtype` (Gloo only needs the element size).
template <class F>
void with_storage_type(c10::ScalarType dtype, F&& f) {
  switch (dtype) {
    case c10::ScalarType::Float: f(float{}); return;
    case c10::ScalarType::Double: f(double{}); return;
    case c10::ScalarType::Int: f(int32_t{}); return;
    case c10::ScalarType::Long: f(int64_t{}); return;
    case c10::ScalarType::Byte: f(uint8_t{}); return;
    case c10::ScalarType::Half:
    case c10::ScalarType::BFloat16: f(uint16_t{}); return;
    default: throw ConfigError(std::string("unsupported dtype ") + c10::toString(dtype));
  }
}

// A tensor as the algorithms see it: contiguous. When the user's tensor is not, `work` is a
// contiguous copy and finish() writes the result back.
struct Staged {
  at::Tensor user, work;
  explicit Staged(const at::Tensor& t) : user(t), work(t.is_contiguous() ? t : t.contiguous()) {}
  void finish() {
    if (!work.is_same(user)) user.copy_(work);
  }
  template <class T>
  T* ptr() { return static_cast<T*>(work.data_ptr()); }
  size_t numel() const { return static_cast<size_t>(work.numel()); }
  size_t nbytes() const { return work.numel() * work.element_size(); }
};

// One rank's side of a collective called differently across ranks: "5 x Float (detail)".
std::string call_text(int64_t count, int64_t dtype, const std::string& detail) {
  return std::to_string(count) + " x " + c10::toString(static_cast<c10::ScalarType>(dtype)) +
         " (" + detail + ")";
}

std::string mismatch_text(int other, const std::string& theirs, const std::string& mine) {
  return " does not match rank " + std::to_string(other) + ", which passed " + theirs +
         "; this rank passed " + mine;
}

void divide_for_avg(at::Tensor& t, int size) {
  if (at::isFloatingType(t.scalar_type())) {
    t.div_(size);
  } else {
    t.div_(size, "trunc");
  }
}

// Gloo's options objects own the transport buffers of an operation, and building them anew for
// every call costs far more than the call itself at a few MiB (new buffers, new bookkeeping in
// every pair): 4.2 ms against 0.7 ms per 1 MiB all-reduce on 2 pinned ranks here. Repeated
// all-reduces on the same tensors (gradient buckets, benchmarks) reuse them. Entries hold weak
// references to the tensors' storage: they never keep memory alive, and an entry whose storage
// is gone is dropped, so a new tensor at a recycled address cannot match it.
class AllreduceCache {
 public:
  static constexpr size_t kCapacity = 8;

  gloo::AllreduceOptions* find(const at::Tensor& in, const at::Tensor& out, ReduceFn fn) {
    for (auto it = entries_.begin(); it != entries_.end();) {
      if (it->in.expired() || it->out.expired()) {
        it = entries_.erase(it);
        continue;
      }
      if (it->in_ptr == in.data_ptr() && it->out_ptr == out.data_ptr() &&
          it->numel == in.numel() && it->dtype == in.scalar_type() && it->fn == fn) {
        entries_.splice(entries_.begin(), entries_, it);
        return entries_.front().opts.get();
      }
      ++it;
    }
    return nullptr;
  }

  gloo::AllreduceOptions* insert(const at::Tensor& in, const at::Tensor& out, ReduceFn fn,
                                 std::unique_ptr<gloo::AllreduceOptions> opts) {
    entries_.push_front(Entry{in.storage().getWeakStorageImpl(),
                              out.storage().getWeakStorageImpl(),
                              in.data_ptr(), out.data_ptr(), in.numel(), in.scalar_type(), fn,
                              std::move(opts)});
    if (entries_.size() > kCapacity) entries_.pop_back();
    return entries_.front().opts.get();
  }

 private:
  struct Entry {
    c10::weak_intrusive_ptr<c10::StorageImpl> in, out;
    void* in_ptr;
    void* out_ptr;
    int64_t numel;
    c10::ScalarType dtype;
    ReduceFn fn;
    std::unique_ptr<gloo::AllreduceOptions> opts;
  };
  std::list<Entry> entries_;
};

struct WorkState {
  bool done = false;
  int waiters = 0;  // threads in wait(): completion wakes only a work someone waits on
  std::exception_ptr error;
};

struct Task;

// Everything a communicator shares with its worker and watcher threads.
struct GlooState {
  int rank = 0, size = 1;
  std::string name, prefix, hostname;
  Ms timeout{30000};
  std::shared_ptr<TcpStore> store;
  std::unique_ptr<FaultChannel> faults;
  std::shared_ptr<gloo::transport::Device> device;
  std::shared_ptr<gloo::rendezvous::Context> ctx;

  std::mutex mu;
  std::condition_variable cv;       // the queue and faults
  std::condition_variable done_cv;  // completions of works that have waiters, and faults
  std::deque<std::shared_ptr<Task>> queue;
  bool stopping = false;
  std::exception_ptr fault;  // set once, when the communicator breaks
  std::atomic<bool> broken{false};  // fault != nullptr, readable without the lock
  uint64_t next_seq = 0;
  std::vector<gloo::transport::UnboundBuffer*> active;  // cancelled by abort()
  int split_count = 0;
  std::vector<std::weak_ptr<Communicator>> children;  // split from this one; aborted with it
  AllreduceCache allreduce_cache;  // used by the worker thread only
  // All-reduce through shared memory when every rank is on this host (null otherwise), set up
  // by the first all_reduce; used by the worker thread only.
  std::unique_ptr<detail::ShmAllReduce> shm;
  bool shm_tried = false;
  struct SignatureCheck {
    std::array<int64_t, 4> mine{};
    std::vector<int64_t> all;
    std::unique_ptr<gloo::transport::UnboundBuffer> send, recv;
  } signature_check;  // used by the worker thread only

  std::string who() const {
    return "communicator '" + name + "' (rank " + std::to_string(rank) + " of " +
           std::to_string(size) + ")";
  }

  // Marks the communicator broken with `e` (first fault wins) and wakes every waiter.
  void set_fault(std::exception_ptr e) {
    std::lock_guard<std::mutex> lock(mu);
    if (!fault) fault = e;
    broken = true;
    for (auto* b : active) {
      b->abortWaitRecv();
      b->abortWaitSend();
    }
    cv.notify_all();
    done_cv.notify_all();
  }
};

struct Task {
  uint64_t seq = 0;
  std::string desc;  // "all_reduce #12 (float32[1024])"
  std::function<void(GlooState&, Task&)> run;
  std::shared_ptr<WorkState> work = std::make_shared<WorkState>();
};

// Registers unbound buffers so abort() can cancel their waits; unregisters on scope exit
// (declare it after the buffers, so it goes first).
class Tracked {
 public:
  Tracked(GlooState& st, std::vector<gloo::transport::UnboundBuffer*> bufs)
      : st_(st), bufs_(std::move(bufs)) {
    std::lock_guard<std::mutex> lock(st_.mu);
    if (st_.fault) std::rethrow_exception(st_.fault);
    st_.active.insert(st_.active.end(), bufs_.begin(), bufs_.end());
  }
  ~Tracked() {
    std::lock_guard<std::mutex> lock(st_.mu);
    for (auto* b : bufs_) st_.active.erase(std::find(st_.active.begin(), st_.active.end(), b));
  }

 private:
  GlooState& st_;
  std::vector<gloo::transport::UnboundBuffer*> bufs_;
};

class GlooWork : public Work {
 public:
  GlooWork(std::shared_ptr<GlooState> st, std::shared_ptr<WorkState> ws, std::string desc)
      : st_(std::move(st)), ws_(std::move(ws)), desc_(std::move(desc)) {}

  void wait(Ms timeout) override {
    detail::WaitClock clock;
    std::unique_lock<std::mutex> lock(st_->mu);
    ++ws_->waiters;
    st_->done_cv.wait_for(lock, timeout, [&] { return ws_->done || st_->fault != nullptr; });
    --ws_->waiters;
    if (ws_->done) {
      if (ws_->error) std::rethrow_exception(ws_->error);
      return;
    }
    if (st_->fault) std::rethrow_exception(st_->fault);
    throw TimeoutError("waiting for " + desc_ + " on " + st_->who() + " timed out after " +
                       std::to_string(timeout.count()) + " ms; it is still running");
  }
  void wait() override { wait(st_->timeout + Ms(5000)); }
  bool is_completed() override {
    std::lock_guard<std::mutex> lock(st_->mu);
    return ws_->done;
  }

 private:
  std::shared_ptr<GlooState> st_;
  std::shared_ptr<WorkState> ws_;
  std::string desc_;
};

std::exception_ptr classify(GlooState& st, const std::string& desc, uint64_t seq,
                            const std::string& what);

// A send or receive, posted by the caller's thread (so a ring of sends cannot deadlock behind
// the collective worker) and completed in wait().
class P2PWork : public Work {
 public:
  P2PWork(std::shared_ptr<GlooState> st, at::Tensor user, at::Tensor staged, bool is_send,
          std::string desc, uint64_t seq)
      : st_(std::move(st)), user_(std::move(user)), staged_(std::move(staged)),
        is_send_(is_send), desc_(std::move(desc)), seq_(seq) {
    buf_ = st_->ctx->createUnboundBuffer(staged_.data_ptr(),
                                         staged_.numel() * staged_.element_size());
  }
  gloo::transport::UnboundBuffer& buffer() { return *buf_; }

  void wait(Ms timeout) override {
    detail::WaitClock clock;
    std::lock_guard<std::mutex> once(wait_mu_);
    if (done_) {
      if (error_) std::rethrow_exception(error_);
      return;
    }
    bool ok = false;
    try {
      Tracked tracked(*st_, {buf_.get()});
      ok = is_send_ ? buf_->waitSend(timeout) : buf_->waitRecv(timeout);
    } catch (const Error&) {
      error_ = std::current_exception();
    } catch (const std::exception& e) {
      error_ = classify(*st_, desc_, seq_, e.what());
      st_->set_fault(error_);
    }
    if (!error_ && !ok) {
      std::lock_guard<std::mutex> lock(st_->mu);
      error_ = st_->fault ? st_->fault
                          : std::make_exception_ptr(AbortedError(desc_ + " was cancelled"));
    }
    done_ = true;
    if (error_) std::rethrow_exception(error_);
    if (!staged_.is_same(user_)) user_.copy_(staged_);
  }
  void wait() override { wait(st_->timeout); }
  bool is_completed() override { return done_; }

 private:
  std::shared_ptr<GlooState> st_;
  at::Tensor user_, staged_;
  bool is_send_;
  std::string desc_;
  uint64_t seq_;
  std::unique_ptr<gloo::transport::UnboundBuffer> buf_;
  std::mutex wait_mu_;
  std::atomic<bool> done_{false};
  std::exception_ptr error_;
};

class CompletedWork : public Work {
 public:
  void wait(Ms) override {}
  void wait() override {}
  bool is_completed() override { return true; }
};

// --- failure classification ---------------------------------------------------------------

// A Gloo timeout: find the peers that did not time out with us (they are the stuck ones).
Fault timeout_fault(GlooState& st, const std::string& desc, uint64_t seq) {
  const std::string base = st.prefix + "/timedout/" + std::to_string(seq) + "/";
  std::vector<int> suspects;
  try {
    st.store->set(base + std::to_string(st.rank), "1");
    // Peers that are alive time out at about the same moment; give them a window to say so.
    std::unique_lock<std::mutex> lock(st.mu);
    st.cv.wait_for(lock, std::min<Ms>(st.timeout / 2, Ms(1000)));
    lock.unlock();
    std::vector<bool> reported(st.size, false);
    for (const auto& k : st.store->list(base)) reported[std::stoi(k.substr(base.size()))] = true;
    for (int r = 0; r < st.size; ++r) {
      if (!reported[r] && r != st.rank) suspects.push_back(r);
    }
  } catch (const Error&) {
    for (int r = 0; r < st.size; ++r) {
      if (r != st.rank) suspects.push_back(r);
    }
  }
  Fault f;
  f.kind = Fault::kTimeout;
  f.rank = st.rank;
  f.peers = suspects;
  f.message = desc + " on communicator '" + st.name + "' timed out after " +
              std::to_string(st.timeout.count()) + " ms waiting on rank(s) " +
              (suspects.empty() ? std::string("unknown") : join_ranks(suspects)) +
              " (reported by rank " + std::to_string(st.rank) + ")";
  return st.faults->publish(f);
}

// A broken connection: the store names the dead peer (its store connection dropped too);
// otherwise match Gloo's message against the peers' pair addresses.
Fault lost_fault(GlooState& st, const std::string& desc, const std::string& what) {
  {
    std::unique_lock<std::mutex> lock(st.mu);
    st.cv.wait_for(lock, kBlameWait, [&] { return st.fault != nullptr; });
  }
  if (auto f = st.faults->current()) return *f;
  int peer = -1;
  try {
    for (int j = 0; j < st.size && peer < 0; ++j) {
      if (j == st.rank) continue;
      auto addr = st.store->try_get(st.prefix + "/pairaddr/" + std::to_string(j) + "/" +
                                    std::to_string(st.rank));
      if (addr && what.find(*addr) != std::string::npos) peer = j;
    }
  } catch (const Error&) {
  }
  Fault f;
  f.kind = Fault::kLost;
  f.rank = peer;
  f.message = desc + " on communicator '" + st.name + "': lost " +
              (peer >= 0 ? "rank " + std::to_string(peer) : std::string("a peer")) +
              " (connection failed: " + what + "; seen by rank " + std::to_string(st.rank) + ")";
  return st.faults->publish(f);
}

// Turns a Gloo exception from operation `desc` (number `seq`) into the communicator's fault.
std::exception_ptr classify(GlooState& st, const std::string& desc, uint64_t seq,
                            const std::string& what) {
  if (what.find("Timed out") != std::string::npos) {
    return timeout_fault(st, desc, seq).to_exception();
  }
  return lost_fault(st, desc, what).to_exception();
}

// --- threads --------------------------------------------------------------------------------

void complete(GlooState& st, Task& t, std::exception_ptr err) {
  std::lock_guard<std::mutex> lock(st.mu);
  t.work->done = true;
  t.work->error = err;
  if (t.work->waiters > 0) st.done_cv.notify_all();
}

void worker_loop(std::shared_ptr<GlooState> st) {
  for (;;) {
    std::shared_ptr<Task> t;
    {
      std::unique_lock<std::mutex> lock(st->mu);
      st->cv.wait(lock, [&] { return st->stopping || !st->queue.empty(); });
      if (st->queue.empty()) return;
      t = st->queue.front();
      st->queue.pop_front();
      if (st->fault) {
        t->work->done = true;
        t->work->error = st->fault;
        st->done_cv.notify_all();
        continue;
      }
    }
    std::exception_ptr err;
    try {
      t->run(*st, *t);
    } catch (const Error&) {
      err = std::current_exception();
    } catch (const std::exception& e) {
      err = classify(*st, t->desc, t->seq, e.what());
    }
    if (err) st->set_fault(err);
    complete(*st, *t, err);
  }
}

// --- the communicator -----------------------------------------------------------------------

class GlooCommunicator : public Communicator {
 public:
  GlooCommunicator(std::shared_ptr<TcpStore> store, int rank, int size, const CommOptions& opts)
      : st_(std::make_shared<GlooState>()) {
    st_->rank = rank;
    st_->size = size;
    st_->name = opts.name;
    st_->prefix = "tenax/comm/" + opts.name;
    st_->timeout = opts.timeout.count() > 0 ? opts.timeout : default_timeout();
    st_->store = std::move(store);

    st_->hostname = !opts.hostname.empty() ? opts.hostname
                                           : env_string("TENAX_HOSTNAME").value_or("127.0.0.1");
    gloo::transport::tcp::attr attr;
    attr.hostname = st_->hostname;
    st_->device = gloo::transport::tcp::CreateDevice(attr);
    st_->ctx = std::make_shared<gloo::rendezvous::Context>(rank, size);
    st_->ctx->setTimeout(st_->timeout);
    GlooStoreAdapter adapter(st_->store, st_->timeout);
    gloo::rendezvous::PrefixStore prefixed(st_->prefix + "/gloo", adapter);
    try {
      st_->ctx->connectFullMesh(prefixed, st_->device);
    } catch (const Error&) {
      throw;
    } catch (const std::exception& e) {
      throw CommError(st_->who() + ": connecting to the peers failed: " + e.what());
    }
    for (int j = 0; j < size; ++j) {
      if (j == rank) continue;
      st_->store->set(st_->prefix + "/pairaddr/" + std::to_string(rank) + "/" + std::to_string(j),
                      st_->ctx->getPair(j)->address().str());
    }

    Fault gone = Fault::gone(rank, opts.name, attr.hostname);
    GlooState* raw = st_.get();
    st_->faults = std::make_unique<FaultChannel>(
        st_->store, st_->prefix, rank, gone,
        [raw](const Fault& f) { raw->set_fault(f.to_exception()); });
    worker_ = std::thread(worker_loop, st_);
  }

  ~GlooCommunicator() override {
    {
      std::lock_guard<std::mutex> lock(st_->mu);
      st_->stopping = true;
      st_->cv.notify_all();
    }
    st_->faults->stop();
    // An operation stuck on a dead peer ends at its timeout; do not wait for it here.
    worker_.detach();
  }

  int rank() const override { return st_->rank; }
  int size() const override { return st_->size; }
  Backend backend() const override { return Backend::kGloo; }
  const std::string& name() const override { return st_->name; }
  Ms timeout() const override { return st_->timeout; }

  using Communicator::all_reduce_async;
  WorkHandle all_reduce_async(const at::Tensor& input, const at::Tensor& output,
                              ReduceOp op) override {
    OpContext c = ctx("all_reduce");
    check_tensor(c, input, "input", false);
    check_tensor(c, output, "output", false);
    check_same_dtype(c, input, "input", output, "output");
    if (input.numel() != output.numel()) {
      throw ConfigError(c.where() + ": 'input' is " + describe(input) + " but 'output' is " +
                        describe(output) + "; they must have the same number of elements");
    }
    ReduceFn fn = reduce_kernel(input.scalar_type(), op);
    if (input.numel() == 0) return done();
    if (st_->size == 1) {  // nothing to exchange: no hand-off to the worker thread
      if (!input.is_same(output)) output.copy_(input);
      return done();
    }
    return enqueue(c, describe(input), {1, input.scalar_type(), input.numel(), -1},
                   [=](GlooState& st, Task& t) {
      Staged out(output);
      const bool in_place = input.is_same(output);
      at::Tensor in = in_place ? out.work : input.contiguous();
      if (st.size == 1) {
        if (!in_place) out.work.copy_(in);
      } else if (shared_memory(st)) {
        shm_all_reduce(st, t, in, out.work, fn, op);
      } else {
        gloo::AllreduceOptions* o = st.allreduce_cache.find(in, out.work, fn);
        if (o == nullptr) {
          auto fresh = std::make_unique<gloo::AllreduceOptions>(st.ctx);
          with_storage_type(input.scalar_type(), [&](auto tag) {
            using T = decltype(tag);
            if (!in_place) fresh->setInput<T>(static_cast<T*>(in.data_ptr()), in.numel());
            fresh->setOutput<T>(out.ptr<T>(), out.numel());
          });
          fresh->setReduceFunction(fn);
          fresh->setTimeout(st.timeout);
          fresh->setMaxSegmentSize(kAllreduceSegmentBytes);
          o = st.allreduce_cache.insert(in, out.work, fn, std::move(fresh));
        }
        gloo::allreduce(*o);
      }
      if (op == ReduceOp::kAvg) divide_for_avg(out.work, st.size);
      out.finish();
    });
  }

  WorkHandle reduce_scatter_async(const at::Tensor& output, const at::Tensor& input,
                                  ReduceOp op) override {
    OpContext c = ctx("reduce_scatter");
    check_tensor(c, input, "input", false);
    check_tensor(c, output, "output", false);
    check_same_dtype(c, input, "input", output, "output");
    if (input.numel() != output.numel() * size()) {
      throw ConfigError(c.where() + ": 'input' is " + describe(input) + " and 'output' is " +
                        describe(output) + "; input must hold size() x output.numel() = " +
                        std::to_string(output.numel() * size()) + " elements");
    }
    ReduceFn fn = reduce_kernel(input.scalar_type(), op);
    if (output.numel() == 0) return done();
    return enqueue(c, describe(input), {2, input.scalar_type(), input.numel(), -1},
                   [=](GlooState& st, Task& t) {
      Staged out(output);
      const size_t chunk = out.nbytes();
      const int n = st.size, r = st.rank;
      // Ring: in step s, send the partial sum of chunk (r-s-1) to the right neighbour and add
      // the left neighbour's partial sum of chunk (r-s-2) into ours. After n-1 steps chunk r
      // holds the full reduction. Each rank sends (n-1)/n of the input.
      at::Tensor acc = input.contiguous().clone();
      at::Tensor incoming = at::empty_like(out.work);
      char* accp = static_cast<char*>(acc.data_ptr());
      auto send_buf = st.ctx->createUnboundBuffer(accp, acc.numel() * acc.element_size());
      auto recv_buf = st.ctx->createUnboundBuffer(incoming.data_ptr(), chunk);
      Tracked tracked(st, {send_buf.get(), recv_buf.get()});
      const uint64_t slot = gloo::Slot::build(kReduceScatterSlotPrefix, 0);
      for (int s = 0; s < n - 1; ++s) {
        const int send_chunk = ((r - s - 1) % n + n) % n;
        const int recv_chunk = ((r - s - 2) % n + n) % n;
        send_buf->send((r + 1) % n, slot, send_chunk * chunk, chunk);
        recv_buf->recv((r - 1 + n) % n, slot, 0, chunk);
        wait_buffers(st, t, send_buf.get(), recv_buf.get());
        fn(accp + recv_chunk * chunk, accp + recv_chunk * chunk, incoming.data_ptr(),
           out.numel());
      }
      std::memcpy(out.work.data_ptr(), accp + r * chunk, chunk);
      if (op == ReduceOp::kAvg) divide_for_avg(out.work, n);
      out.finish();
    });
  }

  WorkHandle all_gather_async(const at::Tensor& output, const at::Tensor& input) override {
    OpContext c = ctx("all_gather");
    check_tensor(c, input, "input", false);
    check_tensor(c, output, "output", false);
    check_same_dtype(c, input, "input", output, "output");
    if (output.numel() != input.numel() * size()) {
      throw ConfigError(c.where() + ": 'output' is " + describe(output) + " and 'input' is " +
                        describe(input) + "; output must hold size() x input.numel() = " +
                        std::to_string(input.numel() * size()) + " elements");
    }
    if (input.numel() == 0) return done();
    return enqueue(c, describe(input), {3, input.scalar_type(), input.numel(), -1},
                   [=](GlooState& st, Task&) {
      Staged out(output);
      at::Tensor mine = out.work.view({-1}).narrow(0, st.rank * input.numel(), input.numel());
      if (!mine.is_same(input)) mine.copy_(input.reshape({-1}));
      if (st.size > 1) {
        with_storage_type(input.scalar_type(), [&](auto tag) {
          using T = decltype(tag);
          gloo::AllgatherOptions o(st.ctx);
          o.setOutput<T>(out.ptr<T>(), out.numel());
          o.setTimeout(st.timeout);
          gloo::allgather(o);
        });
      }
      out.finish();
    });
  }

  WorkHandle broadcast_async(const at::Tensor& tensor, int root) override {
    OpContext c = ctx("broadcast");
    check_tensor(c, tensor, "tensor", false);
    check_rank(c, root, "root");
    if (tensor.numel() == 0) return done();
    return enqueue(c, describe(tensor), {4, tensor.scalar_type(), tensor.numel(), root},
                   [=](GlooState& st, Task&) {
      if (st.size == 1) return;
      Staged buf(tensor);
      with_storage_type(tensor.scalar_type(), [&](auto tag) {
        using T = decltype(tag);
        gloo::BroadcastOptions o(st.ctx);
        o.setOutput<T>(buf.ptr<T>(), buf.numel());
        o.setRoot(root);
        o.setTimeout(st.timeout);
        gloo::broadcast(o);
      });
      buf.finish();
    });
  }

  WorkHandle reduce_async(const at::Tensor& tensor, int root, ReduceOp op) override {
    OpContext c = ctx("reduce");
    check_tensor(c, tensor, "tensor", false);
    check_rank(c, root, "root");
    ReduceFn fn = reduce_kernel(tensor.scalar_type(), op);
    if (tensor.numel() == 0) return done();
    return enqueue(c, describe(tensor), {5, tensor.scalar_type(), tensor.numel(), root},
                   [=](GlooState& st, Task&) {
      Staged buf(tensor);
      // Gloo's reduce uses the output as scratch on every rank; keep non-roots' data intact.
      at::Tensor scratch = st.rank == root ? buf.work : buf.work.clone();
      if (st.size > 1) {
        with_storage_type(tensor.scalar_type(), [&](auto tag) {
          using T = decltype(tag);
          gloo::ReduceOptions o(st.ctx);
          o.setOutput<T>(static_cast<T*>(scratch.data_ptr()), scratch.numel());
          o.setRoot(root);
          o.setReduceFunction(fn);
          o.setTimeout(st.timeout);
          gloo::reduce(o);
        });
      }
      if (st.rank == root) {
        if (op == ReduceOp::kAvg) divide_for_avg(buf.work, st.size);
        buf.finish();
      }
    });
  }

  WorkHandle all_to_all_async(const at::Tensor& output, const at::Tensor& input,
                              const std::vector<int64_t>& output_splits,
                              const std::vector<int64_t>& input_splits) override {
    OpContext c = ctx("all_to_all");
    check_tensor(c, input, "input", false);
    check_tensor(c, output, "output", false);
    check_same_dtype(c, input, "input", output, "output");
    const bool equal = output_splits.empty() && input_splits.empty();
    auto check_splits = [&](const std::vector<int64_t>& splits, const at::Tensor& t,
                            const char* name) {
      if (splits.empty()) {
        if (t.numel() % size() != 0) {
          throw ConfigError(c.where() + ": '" + name + "' is " + describe(t) + "; without " +
                            name + "_splits its element count must divide by size() = " +
                            std::to_string(size()));
        }
        return std::vector<int64_t>(size(), t.numel() / size());
      }
      int64_t total = 0;
      for (auto x : splits) total += x;
      if (static_cast<int>(splits.size()) != size() || total != t.numel()) {
        throw ConfigError(c.where() + ": " + name + "_splits must have size() = " +
                          std::to_string(size()) + " entries summing to " +
                          std::to_string(t.numel()) + " (tensor '" + name + "')");
      }
      return splits;
    };
    auto in_counts = check_splits(input_splits, input, "input");
    auto out_counts = check_splits(output_splits, output, "output");
    if (input.numel() == 0 && output.numel() == 0) return done();
    return enqueue(c, describe(input), {6, input.scalar_type(), input.numel(), -1},
                   [=](GlooState& st, Task&) {
      Staged out(output);
      at::Tensor in = input.contiguous();
      if (st.size == 1) {
        out.work.view({-1}).copy_(in.view({-1}));
      } else {
        with_storage_type(input.scalar_type(), [&](auto tag) {
          using T = decltype(tag);
          if (equal) {
            gloo::AlltoallOptions o(st.ctx);
            o.setInput<T>(static_cast<T*>(in.data_ptr()), in.numel());
            o.setOutput<T>(out.ptr<T>(), out.numel());
            o.setTimeout(st.timeout);
            gloo::alltoall(o);
          } else {
            gloo::AlltoallvOptions o(st.ctx);
            o.setInput<T>(static_cast<T*>(in.data_ptr()), in_counts);
            o.setOutput<T>(out.ptr<T>(), out_counts);
            o.setTimeout(st.timeout);
            gloo::alltoallv(o);
          }
        });
      }
      out.finish();
    });
  }

  WorkHandle send_async(const at::Tensor& tensor, int dst, uint32_t tag) override {
    OpContext c = ctx("send");
    check_tensor(c, tensor, "tensor", false);
    check_rank(c, dst, "destination rank");
    if (dst == rank()) throw ConfigError(c.where() + ": cannot send to itself");
    if (tensor.numel() == 0) return done();
    auto w = post(c, tensor, tensor.contiguous(), true, describe(tensor) + " to rank " + std::to_string(dst));
    w->buffer().send(dst, gloo::Slot::build(kP2PSlotPrefix, tag));
    return w;
  }

  WorkHandle recv_async(const at::Tensor& tensor, int src, uint32_t tag) override {
    OpContext c = ctx("recv");
    check_tensor(c, tensor, "tensor", false);
    check_rank(c, src, "source rank");
    if (src == rank()) throw ConfigError(c.where() + ": cannot receive from itself");
    if (tensor.numel() == 0) return done();
    at::Tensor staged = tensor.is_contiguous() ? tensor : tensor.contiguous();
    auto w = post(c, tensor, staged, false, describe(tensor) + " from rank " + std::to_string(src));
    w->buffer().recv(src, gloo::Slot::build(kP2PSlotPrefix, tag));
    return w;
  }

  WorkHandle barrier_async() override {
    OpContext c = ctx("barrier");
    return enqueue(c, "", {}, [](GlooState& st, Task&) {
      if (st.size == 1) return;
      gloo::BarrierOptions o(st.ctx);
      o.setTimeout(st.timeout);
      gloo::barrier(o);
    });
  }

  std::shared_ptr<Communicator> split(int color, int key) override {
    const int n = ++st_->split_count;
    const std::string base = st_->prefix + "/split" + std::to_string(n) + "/";
    st_->store->set(base + std::to_string(rank()), std::to_string(color) + " " + std::to_string(key));
    std::vector<std::tuple<int, int>> members;  // (key, old rank) of my color
    for (int j = 0; j < size(); ++j) {
      std::string v = st_->store->get(base + std::to_string(j), st_->timeout);
      int cj = 0, kj = 0;
      std::sscanf(v.c_str(), "%d %d", &cj, &kj);
      if (cj == color) members.emplace_back(kj, j);
    }
    if (color < 0) return nullptr;
    std::sort(members.begin(), members.end());
    int new_rank = 0;
    for (size_t i = 0; i < members.size(); ++i) {
      if (std::get<1>(members[i]) == rank()) new_rank = static_cast<int>(i);
    }
    CommOptions opts;
    opts.timeout = st_->timeout;
    opts.name = st_->name + ".split" + std::to_string(n) + ".color" + std::to_string(color);
    opts.hostname = st_->hostname;
    auto child = std::make_shared<GlooCommunicator>(st_->store, new_rank,
                                                    static_cast<int>(members.size()), opts);
    std::lock_guard<std::mutex> lock(st_->mu);
    st_->children.push_back(child);
    return child;
  }

  void abort(const std::string& reason) override {
    Fault f = Fault::aborted(rank(), name(), reason);
    Fault winner = st_->faults->publish(f);
    st_->set_fault(winner.kind == Fault::kAbort ? f.to_exception() : winner.to_exception());
    std::vector<std::weak_ptr<Communicator>> children;
    {
      std::lock_guard<std::mutex> lock(st_->mu);
      children = st_->children;
    }
    for (auto& weak : children) {
      if (auto c = weak.lock()) c->abort(reason);
    }
  }

 private:
  struct Signature {
    int op = 0;
    c10::ScalarType dtype = c10::ScalarType::Undefined;
    int64_t numel = 0;
    int root = -1;
  };

  OpContext ctx(const char* op) const { return OpContext{st_->name, st_->rank, st_->size, op}; }

  static WorkHandle done() { return std::make_shared<CompletedWork>(); }

  std::shared_ptr<P2PWork> post(const OpContext& c, const at::Tensor& user, at::Tensor staged,
                                bool is_send, const std::string& what) {
    std::lock_guard<std::mutex> lock(st_->mu);
    if (st_->fault) std::rethrow_exception(st_->fault);
    uint64_t seq = st_->next_seq++;
    return std::make_shared<P2PWork>(st_, user, std::move(staged), is_send,
                                     c.op + " #" + std::to_string(seq) + " (" + what + ")", seq);
  }

  WorkHandle enqueue(const OpContext& c, const std::string& what, Signature sig,
                     std::function<void(GlooState&, Task&)> body) {
    auto t = std::make_shared<Task>();
    std::lock_guard<std::mutex> lock(st_->mu);
    if (st_->fault) std::rethrow_exception(st_->fault);
    t->seq = st_->next_seq++;
    t->desc = c.op + " #" + std::to_string(t->seq) + (what.empty() ? "" : " (" + what + ")");
    const bool cheap_to_check =
        sig.op != 0 && sig.numel * c10::elementSize(sig.dtype) >= kAlwaysCheckBytes;
    if (sig.op != 0 && st_->size > 1 && (cheap_to_check || debug_collectives())) {
      t->run = [c, sig, body = std::move(body)](GlooState& st, Task& task) {
        check_signatures(st, c, task, sig);
        body(st, task);
      };
    } else {
      t->run = std::move(body);
    }
    st_->queue.push_back(t);
    st_->cv.notify_all();
    return std::make_shared<GlooWork>(st_, t->work, t->desc);
  }

  // Every rank shares (op, dtype, count, root) before the operation, so a mismatch is an error
  // naming the rank instead of a hang or garbage. One round: each rank sends its 32 bytes to
  // every other directly (a ring all-gather would take n-1 rounds, each a wake-up of every
  // rank; on 4 ranks of a 2-core host that cost 18% of a 16 MiB all-reduce).
  static void check_signatures(GlooState& st, const OpContext& c, Task& t, const Signature& sig) {
    auto& chk = st.signature_check;
    if (!chk.send) {  // built once, reused by every check
      chk.all.assign(chk.mine.size() * st.size, 0);
      chk.send = st.ctx->createUnboundBuffer(chk.mine.data(), sizeof(chk.mine));
      chk.recv = st.ctx->createUnboundBuffer(chk.all.data(), chk.all.size() * sizeof(int64_t));
    }
    chk.mine = {sig.op, static_cast<int64_t>(sig.dtype), sig.numel, sig.root};
    std::copy(chk.mine.begin(), chk.mine.end(), chk.all.begin() + st.rank * chk.mine.size());
    {
      Tracked tracked(st, {chk.send.get(), chk.recv.get()});
      const uint64_t slot = gloo::Slot::build(kDebugCheckSlotPrefix, 0);
      const size_t bytes = sizeof(chk.mine);
      for (int j = 0; j < st.size; ++j) {
        if (j == st.rank) continue;
        chk.recv->recv(j, slot, j * bytes, bytes);
        chk.send->send(j, slot, 0, bytes);
      }
      for (int k = 1; k < st.size; ++k) wait_buffers(st, t, chk.send.get(), chk.recv.get());
    }
    const auto& mine = chk.mine;
    const auto& all = chk.all;
    auto text = [](const int64_t* x) {
      return call_text(x[2], x[1], "op #" + std::to_string(x[0]) + ", root " + std::to_string(x[3]));
    };
    for (int r = 0; r < st.size; ++r) {
      const int64_t* x = &all[r * mine.size()];
      if (std::equal(mine.begin(), mine.end(), x)) continue;
      throw ConfigError(c.where() + ": " + t.desc + mismatch_text(r, text(x), text(mine.data())));
    }
  }

  // The shared-memory all-reduce, set up by the first all_reduce (a collective over the store
  // that every rank reaches at the same point), so communicators that never all-reduce reserve
  // no shared memory. Null when the ranks are not all on this host.
  static detail::ShmAllReduce* shared_memory(GlooState& st) {
    if (!st.shm_tried) {
      st.shm_tried = true;
      st.shm = detail::ShmAllReduce::create(*st.store, st.prefix, st.rank, st.size, st.timeout);
    }
    return st.shm.get();
  }

  // The shared-memory all-reduce; its early ends become the communicator's faults.
  static void shm_all_reduce(GlooState& st, Task& t, const at::Tensor& in, at::Tensor& out,
                             ReduceFn fn, ReduceOp op) {
    const uint64_t signature =
        (static_cast<uint64_t>(in.scalar_type()) << 8) | static_cast<uint64_t>(op);
    using Failure = detail::ShmAllReduce::WaitFailure;
    try {
      st.shm->all_reduce(out.data_ptr(), in.data_ptr(), static_cast<size_t>(in.numel()),
                         in.element_size(), fn, signature, st.broken);
      return;
    } catch (const Failure& w) {
      const std::string where = t.desc + " on communicator '" + st.name + "'";
      Fault f;
      switch (w.kind) {
        case Failure::kCancelled: {
          std::lock_guard<std::mutex> lock(st.mu);
          if (st.fault) std::rethrow_exception(st.fault);
          throw AbortedError(where + " was cancelled");
        }
        case Failure::kMismatch: {
          auto text = [](uint64_t count, uint64_t sig) {
            return call_text(static_cast<int64_t>(count), static_cast<int64_t>(sig >> 8),
                             "reduce op " + std::to_string(sig & 0xff));
          };
          throw ConfigError(where + " (rank " + std::to_string(st.rank) + ")" +
                            mismatch_text(w.ranks[0], text(w.count, w.signature),
                                          text(in.numel(), signature)));
        }
        case Failure::kTimedOut:
          f.kind = Fault::kTimeout;
          f.rank = st.rank;
          f.peers = w.ranks;
          f.message = where + " timed out after " + std::to_string(st.timeout.count()) +
                      " ms waiting on rank(s) " + join_ranks(w.ranks) + " (reported by rank " +
                      std::to_string(st.rank) + ")";
          break;
        case Failure::kPeerGone:
          f.kind = Fault::kLost;
          f.rank = w.ranks[0];
          f.message = where + ": lost rank " + std::to_string(w.ranks[0]) +
                      " (its process is gone; seen by rank " + std::to_string(st.rank) + ")";
          break;
      }
      std::rethrow_exception(st.faults->publish(f).to_exception());
    }
  }

  // Waits for a send and/or a receive; an abort() in between turns into the abort's error.
  static void wait_buffers(GlooState& st, Task& t, gloo::transport::UnboundBuffer* send,
                           gloo::transport::UnboundBuffer* recv) {
    bool ok = true;
    if (send) ok = send->waitSend(st.timeout) && ok;
    if (recv && ok) ok = recv->waitRecv(st.timeout);
    if (!ok) {
      std::lock_guard<std::mutex> lock(st.mu);
      if (st.fault) std::rethrow_exception(st.fault);
      throw AbortedError(t.desc + " on communicator '" + st.name + "' was cancelled");
    }
  }

  std::shared_ptr<GlooState> st_;
  std::thread worker_;
};

}  // namespace

std::shared_ptr<Communicator> create_gloo_communicator(std::shared_ptr<TcpStore> store, int rank,
                                                       int size, const CommOptions& options) {
  return std::make_shared<GlooCommunicator>(std::move(store), rank, size, options);
}

}  // namespace tenax
