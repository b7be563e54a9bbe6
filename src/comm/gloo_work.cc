#include "comm/gloo_work.h"

#include "tenax/core/wait_clock.h"

namespace tenax::detail {

void GlooWork::wait(Ms timeout) {
  WaitClock clock;
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

bool GlooWork::is_completed() {
  std::lock_guard<std::mutex> lock(st_->mu);
  return ws_->done;
}

P2PWork::P2PWork(std::shared_ptr<GlooState> st, at::Tensor user, at::Tensor staged, bool is_send,
                 std::string desc, uint64_t seq, uint64_t trace_id)
    : st_(std::move(st)),
      user_(std::move(user)),
      staged_(std::move(staged)),
      is_send_(is_send),
      desc_(std::move(desc)),
      seq_(seq),
      trace_id_(trace_id) {
  buf_ =
      st_->ctx->createUnboundBuffer(staged_.data_ptr(), staged_.numel() * staged_.element_size());
}

void P2PWork::wait(Ms timeout) {
  WaitClock clock;
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
    error_ =
        st_->fault ? st_->fault : std::make_exception_ptr(AbortedError(desc_ + " was cancelled"));
  }
  done_ = true;
  st_->trace->ended(trace_id_, error_);
  if (error_) std::rethrow_exception(error_);
  if (!staged_.is_same(user_)) user_.copy_(staged_);
}

void wait_buffers(GlooState& st, Task& t, gloo::transport::UnboundBuffer* send,
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

}  // namespace tenax::detail
