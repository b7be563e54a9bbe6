// The worker thread of a Gloo communicator: runs the queued operations in order, one at a time,
// and completes their works; an operation that fails breaks the communicator.

#include "comm/gloo_state.h"

namespace tenax::detail {
namespace {

void complete(GlooState& st, Task& t, std::exception_ptr err) {
  std::lock_guard<std::mutex> lock(st.mu);
  t.work->done = true;
  t.work->error = err;
  if (t.work->waiters > 0) st.done_cv.notify_all();
}

}  // namespace

void worker_loop(std::shared_ptr<GlooState> st) {
  for (;;) {
    std::shared_ptr<Task> t;
    std::exception_ptr broken;
    {
      std::unique_lock<std::mutex> lock(st->mu);
      st->cv.wait(lock, [&] { return st->stopping || !st->queue.empty(); });
      if (st->queue.empty()) return;
      t = st->queue.front();
      st->queue.pop_front();
      if (st->fault) {
        broken = st->fault;
        t->work->done = true;
        t->work->error = st->fault;
        st->done_cv.notify_all();
      }
    }
    if (broken) {
      st->trace->ended(t->trace_id, broken);
      continue;
    }
    st->trace->started(t->trace_id);
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
    st->trace->ended(t->trace_id, err);
  }
}

}  // namespace tenax::detail
