#pragma once

// Data parallelism for any torch::nn::Module: parameters and buffers start equal on every dp
// rank, and after each backward pass every parameter's gradient is the average over the dp
// group. Gradients are copied into buckets as autograd produces them; a bucket's all-reduce
// starts as soon as it is full, while backward is still running. The end of backward waits for
// every bucket, so `loss.backward(); optimizer.step();` needs no extra call.

#include <torch/nn/module.h>

#include <memory>
#include <string>
#include <vector>

#include "tenax/comm/communicator.h"
#include "tenax/core/export.h"

namespace tenax {

struct TENAX_API DataParallelOptions {
  // Bytes of gradient per bucket (PyTorch's default), and a smaller first bucket so that
  // communication starts early in backward.
  int64_t bucket_cap_bytes = 25 << 20;
  int64_t first_bucket_cap_bytes = 1 << 20;
  // Parameters that get no gradient in a backward pass are an error unless this is set; then
  // they count as zero gradients.
  bool find_unused_parameters = false;
  // The dtype gradients travel and are summed in; Undefined: their own (fp32 for fp32 master
  // weights). kBFloat16 halves the bytes of each all-reduce; the average is rounded to bf16
  // before it is written back into the fp32 gradients.
  c10::ScalarType reduce_dtype = c10::ScalarType::Undefined;
  // Broadcast the parameters and buffers from dp rank 0 at construction. Turn off only when
  // every rank holds equal values already (same seed, deterministic initialisation, or a
  // restore that follows): it saves one broadcast of the model.
  bool broadcast_parameters = true;

  DataParallelOptions& bucket_cap(int64_t v) { bucket_cap_bytes = v; return *this; }
  DataParallelOptions& reduce_in(c10::ScalarType v) {
    reduce_dtype = v;
    return *this;
  }
  DataParallelOptions& first_bucket_cap(int64_t v) { first_bucket_cap_bytes = v; return *this; }
  DataParallelOptions& allow_unused(bool v) { find_unused_parameters = v; return *this; }
  DataParallelOptions& broadcast_from_rank0(bool v) {
    broadcast_parameters = v;
    return *this;
  }
};

// Thread rules: one training thread owns it: construct it, run the module's forward and backward
// passes, call sync() and no_sync() and destroy it there (or order those calls externally). Its
// gradient hooks run inside backward on the threads autograd picks and issue the dp all-reduces
// in bucket order, so two backward passes of the module never run at once, and nothing else
// issues operations on `dp` during one. module(), num_buckets() and
// buckets_started_during_backward() may be read from any thread between backward passes.
class TENAX_API DataParallel {
 public:
  // Broadcasts `module`'s parameters and buffers from dp rank 0 (unless options say not to),
  // then hooks its parameters.
  // Collective over `dp`. Throws ConfigError when parameters are not on the backend's device
  // type or have different dtypes within one bucket.
  DataParallel(std::shared_ptr<torch::nn::Module> module, std::shared_ptr<Communicator> dp,
               DataParallelOptions options = {});
  ~DataParallel();
  DataParallel(const DataParallel&) = delete;
  DataParallel& operator=(const DataParallel&) = delete;

  // While alive, backward passes only accumulate gradients locally (gradient accumulation
  // across micro-batches); the next backward after it is gone averages the accumulated sum.
  class NoSync {
   public:
    explicit NoSync(DataParallel& dp);
    ~NoSync();

   private:
    DataParallel& dp_;
  };
  NoSync no_sync() { return NoSync(*this); }

  // Averages the parameters' current gradients over the dp group now (bucket by bucket), for
  // when backward ran under no_sync(), e.g. once per micro-batch inside a pipeline schedule.
  // Collective over the dp group. Parameters without a gradient count as zero.
  void sync();

  const std::shared_ptr<torch::nn::Module>& module() const { return module_; }
  // Number of buckets and, for the last synchronised backward, how many buckets started their
  // all-reduce before backward had finished (the overlap).
  size_t num_buckets() const;
  size_t buckets_started_during_backward() const;

  class Impl;

 private:
  std::shared_ptr<torch::nn::Module> module_;
  std::shared_ptr<Impl> impl_;
};

}  // namespace tenax
