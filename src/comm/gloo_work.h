#pragma once

// The Work handles a Gloo communicator returns (internal).

#include <ATen/core/Tensor.h>
#include <gloo/transport/unbound_buffer.h>

#include <atomic>
#include <memory>
#include <mutex>
#include <string>

#include "comm/gloo_state.h"

namespace tenax::detail {

// A queued operation, run by the worker thread; wait() sleeps until the worker completes it or
// the communicator breaks.
class GlooWork : public Work {
 public:
  GlooWork(std::shared_ptr<GlooState> st, std::shared_ptr<WorkState> ws, std::string desc)
      : st_(std::move(st)), ws_(std::move(ws)), desc_(std::move(desc)) {}
  void wait(Ms timeout) override;
  void wait() override { wait(st_->timeout + Ms(5000)); }
  bool is_completed() override;

 private:
  std::shared_ptr<GlooState> st_;
  std::shared_ptr<WorkState> ws_;
  std::string desc_;
};

// A send or receive, posted by the caller's thread (so a ring of sends cannot deadlock behind
// the collective worker) and completed in wait(), on the thread that calls it.
class P2PWork : public Work {
 public:
  P2PWork(std::shared_ptr<GlooState> st, at::Tensor user, at::Tensor staged, bool is_send,
          std::string desc, uint64_t seq, uint64_t trace_id);
  gloo::transport::UnboundBuffer& buffer() { return *buf_; }
  void wait(Ms timeout) override;
  void wait() override { wait(st_->timeout); }
  bool is_completed() override { return done_; }

 private:
  std::shared_ptr<GlooState> st_;
  at::Tensor user_, staged_;
  bool is_send_;
  std::string desc_;
  uint64_t seq_, trace_id_;
  std::unique_ptr<gloo::transport::UnboundBuffer> buf_;
  std::mutex wait_mu_;  // one wait() at a time; guards error_
  std::atomic<bool> done_{false};
  std::exception_ptr error_;
};

// An operation with nothing to do (empty tensors, one rank).
class CompletedWork : public Work {
 public:
  void wait(Ms) override {}
  void wait() override {}
  bool is_completed() override { return true; }
};

// Waits for a send and/or a receive of the worker's operation `t`; an abort() in between turns
// into the abort's error.
void wait_buffers(GlooState& st, Task& t, gloo::transport::UnboundBuffer* send,
                  gloo::transport::UnboundBuffer* recv);

}  // namespace tenax::detail
