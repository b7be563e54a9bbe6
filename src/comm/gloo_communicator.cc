// The CPU backend's communicator: argument checks on the caller's thread, then each collective
// queued for the worker thread (gloo_worker.cc) as a closure over Gloo's algorithms or the
// shared-memory all-reduce; sends and receives posted directly (gloo_work.h). Failures are
// classified in gloo_failures.cc.

#include "comm/gloo_communicator.h"

#include <ATen/ops/empty_like.h>
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
#include <gloo/types.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <thread>
#include <tuple>

#include "comm/argument_checks.h"
#include "comm/gloo_state.h"
#include "comm/gloo_store.h"
#include "comm/gloo_work.h"
#include "comm/reduce_kernels.h"
#include "tenax/comm/flight_recorder.h"
#include "tenax/core/error.h"

namespace tenax {
namespace {

using namespace detail;

class GlooCommunicator : public BackendCommunicator {
 public:
  GlooCommunicator(std::shared_ptr<Store> store, int rank, int size, const CommOptions& opts)
      : st_(std::make_shared<GlooState>()) {
    st_->init(std::move(store), rank, size, opts);

    // Where peers reach this rank: as configured, else the address this host reaches the store
    // from (loopback when the store is local).
    st_->hostname = !opts.hostname.empty() ? opts.hostname : st_->store->local_address();
    if (st_->hostname.empty()) st_->hostname = "127.0.0.1";
    st_->debug_collectives = opts.debug_collectives.value_or(false);
    st_->shared_memory = opts.shared_memory.value_or(true);
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

    FaultRecord gone = FaultRecord::gone(rank, opts.name, attr.hostname);
    GlooState* raw = st_.get();
    st_->faults =
        std::make_unique<FaultChannel>(st_->store, st_->prefix, rank, gone,
                                       [raw](const FaultRecord& f) { raw->set_fault(f.to_exception()); });
    st_->trace = std::make_unique<OpTrace>(opts.name, rank, size);
    worker_ = std::thread([st = st_] { worker_loop(st); });
  }

  ~GlooCommunicator() override {
    {
      std::lock_guard<std::mutex> lock(st_->mu);
      st_->stopping = true;
      st_->cv.notify_all();
    }
    st_->faults->stop();
    stop_worker(std::move(worker_), st_);
  }

  Backend backend() const override { return Backend::kGloo; }

  using Communicator::all_reduce_async;
  WorkHandle all_reduce_async(const at::Tensor& input, const at::Tensor& output,
                              ReduceOp op) override {
    OpContext c = ctx("all_reduce");
    check_all_reduce(c, input, output);
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
                     } else if (ShmCollectives* shm = shared_memory(st)) {
                       shm_all_reduce(st, t, *shm, {}, in, out.work, fn, op);
                     } else if (Hierarchy* h = hierarchy(st)) {
                       hierarchical_all_reduce(st, t, *h, in, out.work, fn, op);
                     } else {
                       ring_all_reduce(st, st.ctx, st.allreduce_cache, in, out.work, fn);
                     }
                     if (op == ReduceOp::kAvg) divide_for_avg(out.work, st.size);
                     out.finish();
                   });
  }

  WorkHandle reduce_scatter_async(const at::Tensor& output, const at::Tensor& input,
                                  ReduceOp op) override {
    OpContext c = ctx("reduce_scatter");
    check_reduce_scatter(c, output, input);
    ReduceFn fn = reduce_kernel(input.scalar_type(), op);
    if (output.numel() == 0) return done();
    return enqueue(c, describe(input), {2, input.scalar_type(), input.numel(), -1},
                   [=](GlooState& st, Task& t) {
                     Staged out(output);
                     if (ShmCollectives* shm = shared_memory(st)) {
                       shm_reduce_scatter(st, t, *shm, input.contiguous(), out.work, fn, op);
                       if (op == ReduceOp::kAvg) divide_for_avg(out.work, st.size);
                       out.finish();
                       return;
                     }
                     const size_t chunk = out.nbytes();
                     const int n = st.size, r = st.rank;
                     // Ring: in step s, send the partial sum of chunk (r-s-1) to the right
                     // neighbour and add the left neighbour's partial sum of chunk (r-s-2) into
                     // ours. After n-1 steps chunk r holds the full reduction. Each rank sends
                     // (n-1)/n of the input.
                     at::Tensor acc = input.contiguous().clone();
                     at::Tensor incoming = at::empty_like(out.work);
                     char* accp = static_cast<char*>(acc.data_ptr());
                     auto send_buf =
                         st.ctx->createUnboundBuffer(accp, acc.numel() * acc.element_size());
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
    check_all_gather(c, output, input);
    if (input.numel() == 0) return done();
    return enqueue(
        c, describe(input), {3, input.scalar_type(), input.numel(), -1},
        [=](GlooState& st, Task& t) {
          Staged out(output);
          if (ShmCollectives* shm = shared_memory(st)) {
            shm_all_gather(st, t, *shm, input.contiguous(), out.work);
            out.finish();
            return;
          }
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
    check_rooted(c, tensor, root);
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
    check_rooted(c, tensor, root);
    ReduceFn fn = reduce_kernel(tensor.scalar_type(), op);
    if (tensor.numel() == 0) return done();
    return enqueue(c, describe(tensor), {5, tensor.scalar_type(), tensor.numel(), root},
                   [=](GlooState& st, Task&) {
                     Staged buf(tensor);
                     // Gloo's reduce uses the output as scratch on every rank; keep non-roots' data
                     // intact.
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
    const bool equal = output_splits.empty() && input_splits.empty();
    const AllToAllCounts counts = check_all_to_all(c, output, input, output_splits, input_splits);
    const std::vector<int64_t> in_counts = counts.input, out_counts = counts.output;
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
    check_point_to_point(c, tensor, dst, /*to_peer=*/true);
    if (tensor.numel() == 0) return done();
    auto w = post(c, tensor, tensor.contiguous(), true, dst,
                  describe(tensor) + " to rank " + std::to_string(dst));
    w->buffer().send(dst, gloo::Slot::build(kP2PSlotPrefix, tag));
    return w;
  }

  WorkHandle recv_async(const at::Tensor& tensor, int src, uint32_t tag) override {
    OpContext c = ctx("recv");
    check_point_to_point(c, tensor, src, /*to_peer=*/false);
    if (tensor.numel() == 0) return done();
    at::Tensor staged = tensor.is_contiguous() ? tensor : tensor.contiguous();
    auto w =
        post(c, tensor, staged, false, src, describe(tensor) + " from rank " + std::to_string(src));
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
    st_->store->set(base + std::to_string(rank()),
                    std::to_string(color) + " " + std::to_string(key));
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
    opts.debug_collectives = st_->debug_collectives;
    opts.shared_memory = st_->shared_memory;
    auto child = std::make_shared<GlooCommunicator>(st_->store, new_rank,
                                                    static_cast<int>(members.size()), opts);
    children_.add(child);
    return child;
  }

  void abort(const std::string& reason) override {
    FaultRecord f = FaultRecord::aborted(rank(), name(), reason);
    FaultRecord winner = st_->faults->publish(f);
    st_->set_fault(winner.kind == FaultRecord::kAbort ? f.to_exception() : winner.to_exception());
    children_.abort_all(reason);
  }

 private:
  const CommIdentity& identity() const override { return *st_; }

  static WorkHandle done() { return std::make_shared<CompletedWork>(); }

  // Under st_->mu: a broken communicator refuses a new operation with its fault, counted.
  void refuse_if_broken(OpKind op) {
    if (!st_->fault) return;
    st_->trace->refused(op, st_->fault);
    std::rethrow_exception(st_->fault);
  }

  std::shared_ptr<P2PWork> post(const OpContext& c, const at::Tensor& user, at::Tensor staged,
                                bool is_send, int peer, const std::string& what) {
    std::lock_guard<std::mutex> lock(st_->mu);
    refuse_if_broken(is_send ? OpKind::kSend : OpKind::kRecv);
    uint64_t seq = st_->next_seq++;
    const int64_t bytes = staged.numel() * staged.element_size();
    const uint64_t id = st_->trace->enqueued(is_send ? OpKind::kSend : OpKind::kRecv, seq,
                                             staged.scalar_type(), staged.numel(), bytes, peer);
    st_->trace->started(id);
    return std::make_shared<P2PWork>(st_, user, std::move(staged), is_send,
                                     c.op + " #" + std::to_string(seq) + " (" + what + ")", seq,
                                     id);
  }

  WorkHandle enqueue(const OpContext& c, const std::string& what, CallSignature sig,
                     std::function<void(GlooState&, Task&)> body) {
    auto t = std::make_shared<Task>();
    std::lock_guard<std::mutex> lock(st_->mu);
    refuse_if_broken(op_kind(c.op));
    t->seq = st_->next_seq++;
    t->desc = c.op + " #" + std::to_string(t->seq) + (what.empty() ? "" : " (" + what + ")");
    t->trace_id = st_->trace->enqueued(
        op_kind(c.op), t->seq, sig.dtype, sig.numel,
        sig.op != 0 ? sig.numel * static_cast<int64_t>(c10::elementSize(sig.dtype)) : 0, sig.root);
    const bool cheap_to_check =
        sig.op != 0 && sig.numel * c10::elementSize(sig.dtype) >= kAlwaysCheckBytes;
    if (sig.op != 0 && st_->size > 1 && (cheap_to_check || st_->debug_collectives)) {
      t->run = [c, sig, body = std::move(body)](GlooState& st, Task& task) {
        check_same_call_across_ranks(st, c, task, sig);
        body(st, task);
      };
    } else {
      t->run = std::move(body);
    }
    st_->queue.push_back(t);
    st_->cv.notify_all();
    return std::make_shared<GlooWork>(st_, t->work, t->desc);
  }

  std::shared_ptr<GlooState> st_;
  std::thread worker_;
};

}  // namespace

std::shared_ptr<Communicator> detail::create_gloo_communicator(std::shared_ptr<Store> store, int rank,
                                                       int size, const CommOptions& options) {
  return std::make_shared<GlooCommunicator>(std::move(store), rank, size, options);
}

}  // namespace tenax
