#include "tenax/parallel/data_parallel.h"

#include <torch/csrc/autograd/engine.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/utils/lambda_post_hook.h>
#include <torch/csrc/autograd/variable.h>

#include <ATen/core/grad_mode.h>

#include <algorithm>
#include <mutex>

#include "tenax/core/error.h"

namespace tenax {

class TENAX_INTERNAL DataParallel::Impl : public std::enable_shared_from_this<DataParallel::Impl> {
 public:
  struct Slot {
    std::string name;
    torch::Tensor param;
    int bucket;
    int64_t offset, numel;
    bool ready = false;
  };
  struct Bucket {
    torch::Tensor flat;
    torch::Tensor wire;  // flat in the reduce dtype, when it differs (else undefined)
    std::vector<int> slots;
    int pending = 0;
    WorkHandle work;
    bool started = false;
  };

  Impl(std::shared_ptr<Communicator> dp, DataParallelOptions o) : dp_(std::move(dp)), opts_(o) {}

  // Buckets follow the reverse of the parameter order: roughly the order in which backward
  // produces gradients. The order is the same on every rank, and buckets are launched strictly
  // in it, so every rank issues the same all-reduces in the same sequence.
  void build(torch::nn::Module& module) {
    auto named = module.named_parameters(/*recurse=*/true);
    std::vector<std::pair<std::string, torch::Tensor>> params;
    for (const auto& p : named) {
      if (p.value().requires_grad()) params.emplace_back(p.key(), p.value());
    }
    std::reverse(params.begin(), params.end());
    int64_t bytes = 0;
    for (const auto& [name, p] : params) {
      const int64_t nb = p.numel() * static_cast<int64_t>(p.element_size());
      const int64_t cap =
          buckets_.size() == 1 ? opts_.first_bucket_cap_bytes : opts_.bucket_cap_bytes;
      const bool new_bucket = buckets_.empty() || (bytes > 0 && bytes + nb > cap) ||
                              buckets_.back().flat.scalar_type() != p.scalar_type();
      if (new_bucket) {
        buckets_.emplace_back();
        buckets_.back().flat = at::empty({0}, p.options());
        bytes = 0;
      }
      Bucket& b = buckets_.back();
      const int bucket = static_cast<int>(buckets_.size() - 1);
      slots_.push_back({name, p, bucket, b.flat.numel(), p.numel()});
      b.slots.push_back(static_cast<int>(slots_.size() - 1));
      b.flat = at::empty({b.flat.numel() + p.numel()}, p.options());
      bytes += nb;
    }
    for (auto& b : buckets_) {
      b.flat.zero_();
      const auto wire = opts_.reduce_dtype;
      if (wire != c10::ScalarType::Undefined && wire != b.flat.scalar_type()) {
        b.wire = at::empty_like(b.flat, b.flat.options().dtype(wire));
      }
    }
  }

  // Starts the average of bucket `b` (in its wire dtype when it has one).
  WorkHandle reduce(Bucket& b) {
    if (!b.wire.defined()) return dp_->all_reduce_async(b.flat, ReduceOp::kAvg);
    b.wire.copy_(b.flat);
    return dp_->all_reduce_async(b.wire, ReduceOp::kAvg);
  }

  void hook(const std::shared_ptr<Impl>& self) {
    for (size_t i = 0; i < slots_.size(); ++i) {
      auto acc = torch::autograd::impl::grad_accumulator(slots_[i].param);
      std::weak_ptr<Impl> weak = self;
      acc->add_post_hook(std::make_unique<torch::autograd::utils::LambdaPostHook>(
          [weak, i](const torch::autograd::variable_list& outputs,
                    const torch::autograd::variable_list&) {
            if (auto me = weak.lock()) me->on_grad_ready(i);
            return outputs;
          }));
      accumulators_.push_back(acc);
    }
  }

  void on_grad_ready(size_t i) {
    std::lock_guard<std::mutex> lock(mu_);
    if (no_sync_ > 0) return;
    if (!in_backward_) begin_backward();
    Slot& s = slots_[i];
    if (s.ready) return;  // the same parameter reached twice (shared weights): already copied
    s.ready = true;
    Bucket& b = buckets_[s.bucket];
    b.flat.narrow(0, s.offset, s.numel).copy_(s.param.grad().reshape({-1}));
    if (--b.pending == 0) launch_ready();
  }

  void begin_backward() {
    in_backward_ = true;
    next_launch_ = 0;
    started_during_backward_ = 0;
    for (auto& s : slots_) s.ready = false;
    for (auto& b : buckets_) {
      b.pending = static_cast<int>(b.slots.size());
      b.started = false;
      b.work.reset();
    }
    std::weak_ptr<Impl> weak = shared_from_this();
    torch::autograd::Engine::get_default_engine().queue_callback([weak] {
      if (auto me = weak.lock()) me->finish_backward();
    });
  }

  // Starts the all-reduce of every full bucket, in bucket order.
  void launch_ready() {
    while (next_launch_ < buckets_.size() && buckets_[next_launch_].pending == 0) {
      Bucket& b = buckets_[next_launch_++];
      b.work = reduce(b);
      b.started = true;
      ++started_during_backward_;
    }
  }

  void sync_now() {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto& s : slots_) {
      auto dst = buckets_[s.bucket].flat.narrow(0, s.offset, s.numel);
      if (s.param.grad().defined()) {
        dst.copy_(s.param.grad().reshape({-1}));
      } else {
        dst.zero_();
      }
    }
    for (auto& b : buckets_) b.work = reduce(b);
    write_back();
  }

  // Waits for every bucket and copies the averages into the parameters' gradients.
  void write_back() {
    for (auto& b : buckets_) {
      b.work->wait();
      if (b.wire.defined()) b.flat.copy_(b.wire);
    }
    for (auto& s : slots_) {
      torch::Tensor avg = buckets_[s.bucket].flat.narrow(0, s.offset, s.numel).view_as(s.param);
      if (s.param.grad().defined()) {
        s.param.mutable_grad().copy_(avg);
      } else {
        s.param.mutable_grad() = avg.clone();
      }
    }
  }

  // Runs at the end of backward: handles parameters that got no gradient, waits for every
  // bucket and writes the averages back into the parameters' gradients.
  void finish_backward() {
    std::lock_guard<std::mutex> lock(mu_);
    in_backward_ = false;
    std::vector<std::string> unused;
    for (auto& s : slots_) {
      if (s.ready) continue;
      unused.push_back(s.name);
      if (opts_.find_unused_parameters) {
        s.ready = true;
        buckets_[s.bucket].flat.narrow(0, s.offset, s.numel).zero_();
        --buckets_[s.bucket].pending;
      }
    }
    if (!unused.empty() && !opts_.find_unused_parameters) {
      std::string names;
      for (const auto& n : unused) names += (names.empty() ? "" : ", ") + n;
      throw ConfigError("DataParallel (dp rank " + std::to_string(dp_->rank()) + " of " +
                        std::to_string(dp_->size()) + "): parameter(s) " + names +
                        " got no gradient in this backward pass; make every parameter take part "
                        "in the loss, or set DataParallelOptions().allow_unused(true)");
    }
    const size_t during = started_during_backward_;
    launch_ready();
    started_during_backward_ = during;
    write_back();
  }

  std::shared_ptr<Communicator> dp_;
  DataParallelOptions opts_;
  std::vector<Slot> slots_;
  std::vector<Bucket> buckets_;
  // shared_ptr or intrusive_ptr, as the LibTorch version has it.
  std::vector<decltype(torch::autograd::impl::grad_accumulator(at::Tensor()))> accumulators_;
  std::mutex mu_;
  bool in_backward_ = false;
  size_t next_launch_ = 0;
  size_t started_during_backward_ = 0;
  int no_sync_ = 0;
};

DataParallel::DataParallel(std::shared_ptr<torch::nn::Module> module,
                           std::shared_ptr<Communicator> dp, DataParallelOptions options)
    : module_(std::move(module)), impl_(std::make_shared<Impl>(std::move(dp), options)) {
  at::NoGradGuard no_grad;
  if (options.broadcast_parameters) {
    for (auto& p : module_->parameters()) impl_->dp_->broadcast(p, 0);
    for (auto& b : module_->buffers()) impl_->dp_->broadcast(b, 0);
  }
  impl_->build(*module_);
  impl_->hook(impl_);
}

DataParallel::~DataParallel() = default;

DataParallel::NoSync::NoSync(DataParallel& dp) : dp_(dp) {
  std::lock_guard<std::mutex> lock(dp_.impl_->mu_);
  ++dp_.impl_->no_sync_;
}

DataParallel::NoSync::~NoSync() {
  std::lock_guard<std::mutex> lock(dp_.impl_->mu_);
  --dp_.impl_->no_sync_;
}

void DataParallel::sync() { impl_->sync_now(); }

size_t DataParallel::num_buckets() const { return impl_->buckets_.size(); }

size_t DataParallel::buckets_started_during_backward() const {
  return impl_->started_during_backward_;
}

}  // namespace tenax
