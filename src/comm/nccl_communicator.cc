#include "comm/nccl_communicator.h"

#include <ATen/cuda/CUDAEvent.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>
#include <nccl.h>
#include <unistd.h>

#include <mutex>
#include <thread>

#include "comm/argument_checks.h"
#include "comm/backend_communicator.h"
#include "comm/fault.h"
#include "comm/op_trace.h"
#include "tenax/core/wait_clock.h"
#include "tenax/comm/flight_recorder.h"
#include "tenax/comm/init.h"
#include "tenax/core/config.h"
#include "tenax/core/error.h"

// CUDAEvent is at::cuda's up to LibTorch 2.14 and c10::cuda's from 2.15; one name for either.
namespace at::cuda {}
namespace c10::cuda {}
namespace tenax::cuda_names {
using namespace at::cuda;
using namespace c10::cuda;
}  // namespace tenax::cuda_names

namespace tenax {
namespace {

using namespace detail;
using CUDAEvent = cuda_names::CUDAEvent;
using c10::cuda::CUDAStream;
using Ms = std::chrono::milliseconds;
using Clock = std::chrono::steady_clock;

ncclDataType_t nccl_type(c10::ScalarType t) {
  switch (t) {
    case c10::ScalarType::Float: return ncclFloat32;
    case c10::ScalarType::Double: return ncclFloat64;
    case c10::ScalarType::Half: return ncclFloat16;
    case c10::ScalarType::BFloat16: return ncclBfloat16;
    case c10::ScalarType::Int: return ncclInt32;
    case c10::ScalarType::Long: return ncclInt64;
    case c10::ScalarType::Byte: return ncclUint8;
    default: throw ConfigError(std::string("dtype ") + c10::toString(t) + " is not supported by nccl");
  }
}

ncclRedOp_t nccl_op(ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum: return ncclSum;
    case ReduceOp::kAvg: return ncclAvg;
    case ReduceOp::kMin: return ncclMin;
    case ReduceOp::kMax: return ncclMax;
    case ReduceOp::kProduct: return ncclProd;
  }
  return ncclSum;
}

struct TENAX_INTERNAL NcclState : CommIdentity {
  int device = 0;
  ncclComm_t comm = nullptr;
  // NCCL's stream, from LibTorch's pool; set once the device is known.
  std::optional<CUDAStream> stream;
  std::mutex mu;
  std::exception_ptr fault;
  std::unique_ptr<FaultChannel> faults;
  std::unique_ptr<OpTrace> trace;  // the flight recorder and metrics (thread-safe itself)
  uint64_t next_seq = 0;

  std::string who() const {
    return "communicator '" + name + "' (rank " + std::to_string(rank) + " of " +
           std::to_string(size) + ", cuda:" + std::to_string(device) + ")";
  }
  void set_fault(std::exception_ptr e) {
    std::lock_guard<std::mutex> lock(mu);
    if (!fault) {
      fault = e;
      if (comm) ncclCommAbort(comm);
      comm = nullptr;
    }
  }
  void throw_if_broken() {
    std::lock_guard<std::mutex> lock(mu);
    if (fault) std::rethrow_exception(fault);
  }
  // A broken communicator refuses a new operation with its fault, counted.
  void refuse_if_broken(OpKind op) {
    std::lock_guard<std::mutex> lock(mu);
    if (!fault) return;
    trace->refused(op, fault);
    std::rethrow_exception(fault);
  }

  // Waits for a non-blocking NCCL call to leave ncclInProgress, up to the deadline.
  void settle(ncclResult_t r, const std::string& what, Clock::time_point deadline) {
    while (r == ncclInProgress) {
      if (Clock::now() > deadline) fail_timeout(what);
      std::this_thread::sleep_for(std::chrono::microseconds(50));
      ncclCommGetAsyncError(comm, &r);
    }
    if (r != ncclSuccess) fail_nccl(r, what);
  }

  [[noreturn]] void fail_timeout(const std::string& what) {
    FaultRecord f;
    f.kind = FaultRecord::kTimeout;
    f.rank = rank;
    f.message = what + " on " + who() + " timed out after " + std::to_string(timeout.count()) +
                " ms";
    f = faults->publish(f);
    set_fault(f.to_exception());
    std::rethrow_exception(f.to_exception());
  }

  [[noreturn]] void fail_nccl(ncclResult_t r, const std::string& what) {
    FaultRecord f;
    if (auto published = faults->current()) {
      f = *published;
    } else {
      f.kind = (r == ncclRemoteError || r == ncclSystemError) ? FaultRecord::kLost : FaultRecord::kError;
      f.rank = -1;
      f.message = what + " on " + who() + " failed: " + ncclGetErrorString(r) + " (" +
                  (comm ? ncclGetLastError(comm) : "") + ")";
      f = faults->publish(f);
    }
    set_fault(f.to_exception());
    std::rethrow_exception(f.to_exception());
  }
};

class NcclWork : public Work {
 public:
  NcclWork(std::shared_ptr<NcclState> st, std::unique_ptr<CUDAEvent> done, std::string desc,
           std::function<void()> finish, uint64_t trace_id)
      : st_(std::move(st)),
        done_(std::move(done)),
        desc_(std::move(desc)),
        finish_(std::move(finish)),
        trace_id_(trace_id) {}

  void wait(Ms timeout) override {
    try {
      wait_event(timeout);
    } catch (...) {
      st_->trace->ended(trace_id_, std::current_exception());
      throw;
    }
    st_->trace->ended(trace_id_, nullptr);
  }
  void wait() override { wait(st_->timeout); }
  bool is_completed() override { return done_->query(); }

 private:
  void wait_event(Ms timeout) {
    WaitClock clock;
    auto deadline = Clock::now() + timeout;
    for (;;) {
      st_->throw_if_broken();
      if (done_->query()) break;  // throws on a CUDA error
      ncclResult_t r = ncclSuccess;
      {
        std::lock_guard<std::mutex> lock(st_->mu);
        if (st_->comm) ncclCommGetAsyncError(st_->comm, &r);
      }
      if (r != ncclSuccess && r != ncclInProgress) st_->fail_nccl(r, desc_);
      if (Clock::now() > deadline) st_->fail_timeout(desc_);
      std::this_thread::sleep_for(std::chrono::microseconds(20));
    }
    // Later work on the caller's current stream sees the result.
    done_->block(c10::cuda::getCurrentCUDAStream(static_cast<c10::DeviceIndex>(st_->device)));
    if (finish_) {
      finish_();
      finish_ = nullptr;
    }
  }

  std::shared_ptr<NcclState> st_;
  std::unique_ptr<CUDAEvent> done_;
  std::string desc_;
  std::function<void()> finish_;
  uint64_t trace_id_;
};

class NcclCommunicator : public BackendCommunicator {
 public:
  NcclCommunicator(std::shared_ptr<Store> store, int rank, int size, const CommOptions& opts,
                   ncclComm_t parent_split = nullptr)
      : st_(std::make_shared<NcclState>()) {
    st_->init(std::move(store), rank, size, opts);
    int count = nccl_device_count();
    if (count == 0) {
      throw ConfigError("rank " + std::to_string(rank) + ": the nccl backend needs a CUDA device "
                        "and none is visible");
    }
    st_->device = (opts.device >= 0 ? opts.device : launch_info().local_rank) % count;
    c10::cuda::CUDAGuard guard(static_cast<c10::DeviceIndex>(st_->device));
    auto deadline = Clock::now() + st_->timeout;
    FaultRecord gone = FaultRecord::gone(rank, opts.name, "cuda:" + std::to_string(st_->device));
    NcclState* raw = st_.get();
    st_->faults = std::make_unique<FaultChannel>(
        st_->store, st_->prefix, rank, gone,
        [raw](const FaultRecord& f) { raw->set_fault(f.to_exception()); });
    if (parent_split == nullptr) {
      ncclUniqueId id;
      const std::string key = st_->prefix + "/nccl_id";
      if (rank == 0) {
        if (ncclGetUniqueId(&id) != ncclSuccess) throw CommError("ncclGetUniqueId failed");
        st_->store->set(key, std::string(reinterpret_cast<char*>(&id), sizeof(id)));
      } else {
        std::string v = st_->store->get(key, st_->timeout);
        std::memcpy(&id, v.data(), sizeof(id));
      }
      ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
      config.blocking = 0;
      ncclResult_t r = ncclCommInitRankConfig(&st_->comm, size, id, rank, &config);
      st_->settle(r, "ncclCommInitRank", deadline);
    } else {
      st_->comm = parent_split;
    }
    st_->stream = c10::cuda::getStreamFromPool(/*isHighPriority=*/true,
                                                static_cast<c10::DeviceIndex>(st_->device));
    st_->trace = std::make_unique<OpTrace>(opts.name, rank, size);
  }

  ~NcclCommunicator() override {
    st_->faults->stop();
    std::lock_guard<std::mutex> lock(st_->mu);
    if (st_->comm) {
      ncclCommFinalize(st_->comm);
      ncclCommDestroy(st_->comm);
    }
  }

  Backend backend() const override { return Backend::kNccl; }

  using Communicator::all_reduce_async;
  WorkHandle all_reduce_async(const at::Tensor& input, const at::Tensor& output,
                              ReduceOp op) override {
    OpContext c = ctx("all_reduce");
    check_all_reduce(c, input, output);
    at::Tensor in = input.contiguous(), out = output.contiguous();
    return launch(c, input, [&](ncclComm_t comm) {
      return ncclAllReduce(in.data_ptr(), out.data_ptr(), in.numel(), nccl_type(in.scalar_type()),
                           nccl_op(op), comm, stream());
    }, output, out, {in, out});
  }
  WorkHandle reduce_scatter_async(const at::Tensor& output, const at::Tensor& input,
                                  ReduceOp op) override {
    OpContext c = ctx("reduce_scatter");
    check_reduce_scatter(c, output, input);
    at::Tensor in = input.contiguous(), out = output.contiguous();
    return launch(c, input, [&](ncclComm_t comm) {
      return ncclReduceScatter(in.data_ptr(), out.data_ptr(), out.numel(),
                               nccl_type(in.scalar_type()), nccl_op(op), comm, stream());
    }, output, out, {in, out});
  }
  WorkHandle all_gather_async(const at::Tensor& output, const at::Tensor& input) override {
    OpContext c = ctx("all_gather");
    check_all_gather(c, output, input);
    at::Tensor in = input.contiguous(), out = output.contiguous();
    return launch(c, input, [&](ncclComm_t comm) {
      return ncclAllGather(in.data_ptr(), out.data_ptr(), in.numel(), nccl_type(in.scalar_type()),
                           comm, stream());
    }, output, out, {in, out});
  }
  WorkHandle broadcast_async(const at::Tensor& tensor, int root) override {
    OpContext c = ctx("broadcast");
    check_rooted(c, tensor, root);
    at::Tensor buf = tensor.contiguous();
    return launch(c, tensor, [&](ncclComm_t comm) {
      return ncclBroadcast(buf.data_ptr(), buf.data_ptr(), buf.numel(),
                           nccl_type(buf.scalar_type()), root, comm, stream());
    }, tensor, buf, {buf});
  }
  WorkHandle reduce_async(const at::Tensor& tensor, int root, ReduceOp op) override {
    OpContext c = ctx("reduce");
    check_rooted(c, tensor, root);
    at::Tensor buf = tensor.contiguous();
    return launch(c, tensor, [&](ncclComm_t comm) {
      return ncclReduce(buf.data_ptr(), buf.data_ptr(), buf.numel(), nccl_type(buf.scalar_type()),
                        nccl_op(op), root, comm, stream());
    }, tensor, buf, {buf});
  }
  WorkHandle all_to_all_async(const at::Tensor& output, const at::Tensor& input,
                              const std::vector<int64_t>& output_splits,
                              const std::vector<int64_t>& input_splits) override {
    OpContext c = ctx("all_to_all");
    const int n = size();
    const AllToAllCounts counts = check_all_to_all(c, output, input, output_splits, input_splits);
    const std::vector<int64_t>& in_counts = counts.input;
    const std::vector<int64_t>& out_counts = counts.output;
    at::Tensor in = input.contiguous(), out = output.contiguous();
    const size_t es = in.element_size();
    return launch(c, input, [&](ncclComm_t comm) {
      ncclGroupStart();
      size_t in_off = 0, out_off = 0;
      for (int p = 0; p < n; ++p) {
        ncclSend(static_cast<char*>(in.data_ptr()) + in_off * es, in_counts[p],
                 nccl_type(in.scalar_type()), p, comm, stream());
        ncclRecv(static_cast<char*>(out.data_ptr()) + out_off * es, out_counts[p],
                 nccl_type(in.scalar_type()), p, comm, stream());
        in_off += in_counts[p];
        out_off += out_counts[p];
      }
      return ncclGroupEnd();
    }, output, out, {in, out});
  }
  WorkHandle send_async(const at::Tensor& tensor, int dst, uint32_t) override {
    OpContext c = ctx("send");
    check_point_to_point(c, tensor, dst, /*to_peer=*/true);
    at::Tensor buf = tensor.contiguous();
    return launch(c, tensor, [&](ncclComm_t comm) {
      return ncclSend(buf.data_ptr(), buf.numel(), nccl_type(buf.scalar_type()), dst, comm,
                      stream());
    }, at::Tensor(), at::Tensor(), {buf});
  }
  WorkHandle recv_async(const at::Tensor& tensor, int src, uint32_t) override {
    OpContext c = ctx("recv");
    check_point_to_point(c, tensor, src, /*to_peer=*/false);
    at::Tensor buf = tensor.contiguous();
    return launch(c, tensor, [&](ncclComm_t comm) {
      return ncclRecv(buf.data_ptr(), buf.numel(), nccl_type(buf.scalar_type()), src, comm,
                      stream());
    }, tensor, buf, {buf});
  }
  WorkHandle barrier_async() override {
    OpContext c = ctx("barrier");
    if (!barrier_buf_.defined()) {
      barrier_buf_ = at::zeros({1}, at::TensorOptions().dtype(at::kFloat).device(
                                        at::kCUDA, static_cast<c10::DeviceIndex>(st_->device)));
    }
    return launch(c, at::Tensor(), [&](ncclComm_t comm) {
      return ncclAllReduce(barrier_buf_.data_ptr(), barrier_buf_.data_ptr(), 1, ncclFloat32,
                           ncclSum, comm, stream());
    }, at::Tensor(), at::Tensor(), {barrier_buf_});
  }

  std::shared_ptr<Communicator> split(int color, int key) override {
    st_->throw_if_broken();
    ncclComm_t child = nullptr;
    ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
    config.blocking = 0;
    ncclResult_t r = ncclCommSplit(st_->comm, color < 0 ? NCCL_SPLIT_NOCOLOR : color, key,
                                   &child, &config);
    st_->settle(r, "ncclCommSplit", Clock::now() + st_->timeout);
    if (color < 0 || child == nullptr) return nullptr;
    int child_rank = 0, child_size = 0;
    ncclCommUserRank(child, &child_rank);
    ncclCommCount(child, &child_size);
    CommOptions opts;
    opts.timeout = st_->timeout;
    opts.name = st_->name + ".split" + std::to_string(++splits_) + ".color" + std::to_string(color);
    auto made = std::make_shared<NcclCommunicator>(st_->store, child_rank, child_size, opts, child);
    children_.add(made);
    return made;
  }

  void abort(const std::string& reason) override {
    FaultRecord f = FaultRecord::aborted(rank(), name(), reason);
    st_->faults->publish(f);
    st_->set_fault(f.to_exception());
    children_.abort_all(reason);
  }

 private:
  const CommIdentity& identity() const override { return *st_; }

  const CUDAStream& stream() const { return *st_->stream; }

  // Orders the call after the caller's current stream, issues it on the communicator's stream,
  // and returns a Work that copies `staged` back into `user` when they differ (non-contiguous
  // user tensors). The memory of the `touched` tensors is recorded as in use on the
  // communicator's stream, so the caching allocator does not hand it out again before the
  // operation is done even if the caller drops its tensors at once.
  template <class F>
  WorkHandle launch(const OpContext& c, const at::Tensor& first, F&& call, at::Tensor user,
                    at::Tensor staged, std::initializer_list<at::Tensor> touched) {
    st_->refuse_if_broken(op_kind(c.op));
    const uint64_t seq = st_->next_seq++;
    std::string desc =
        c.op + " #" + std::to_string(seq) + (first.defined() ? " (" + describe(first) + ")" : "");
    const uint64_t trace_id = st_->trace->enqueued(
        op_kind(c.op), seq, first.defined() ? first.scalar_type() : c10::ScalarType::Undefined,
        first.defined() ? first.numel() : 0,
        first.defined() ? first.numel() * static_cast<int64_t>(first.element_size()) : 0, -1);
    st_->trace->started(trace_id);
    const auto device = static_cast<c10::DeviceIndex>(st_->device);
    c10::cuda::CUDAGuard guard(device);
    CUDAEvent ready;
    ready.record(c10::cuda::getCurrentCUDAStream(device));
    ready.block(stream());
    for (const at::Tensor& t : touched) {
      if (t.defined() && t.is_cuda() && t.storage().data_ptr().get() != nullptr) {
        c10::cuda::CUDACachingAllocator::recordStream(t.storage().data_ptr(), stream());
      }
    }
    ncclComm_t comm;
    {
      std::lock_guard<std::mutex> lock(st_->mu);
      comm = st_->comm;
    }
    st_->settle(call(comm), desc, Clock::now() + st_->timeout);
    auto done = std::make_unique<CUDAEvent>();
    done->record(stream());
    std::function<void()> finish;
    if (user.defined() && !staged.is_same(user)) finish = [user, staged]() mutable { user.copy_(staged); };
    return std::make_shared<NcclWork>(st_, std::move(done), desc, std::move(finish), trace_id);
  }

  std::shared_ptr<NcclState> st_;
  at::Tensor barrier_buf_;
  int splits_ = 0;
};

}  // namespace

int detail::nccl_device_count() { return c10::cuda::device_count(); }

std::shared_ptr<Communicator> detail::create_nccl_communicator(std::shared_ptr<Store> store, int rank,
                                                       int size, const CommOptions& options) {
  return std::make_shared<NcclCommunicator>(std::move(store), rank, size, options);
}

}  // namespace tenax
