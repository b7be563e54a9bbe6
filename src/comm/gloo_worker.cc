// The worker thread of a Gloo communicator: runs the queued operations in order, one at a time,
// and completes their works; an operation that fails breaks the communicator.

#include <list>
#include <utility>

#include "comm/gloo_state.h"

namespace tenax::detail {
namespace {

void complete(GlooState& st, Task& t, std::exception_ptr err) {
  std::lock_guard<std::mutex> lock(st.mu);
  t.work->done = true;
  t.work->error = err;
  if (t.work->waiters > 0) st.done_cv.notify_all();
}

// The workers of destroyed communicators whose last operation was still inside Gloo.
class RetiredWorkers {
 public:
  void add(std::thread worker, std::shared_ptr<std::atomic<bool>> exited) {
    std::lock_guard<std::mutex> lock(mu_);
    workers_.emplace_back(std::move(worker), std::move(exited));
  }

  // Joins the workers that have returned.
  void reap() {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto it = workers_.begin(); it != workers_.end();) {
      if (*it->second) {
        it->first.join();  // past its last statement
        it = workers_.erase(it);
      } else {
        ++it;
      }
    }
  }

 private:
  std::mutex mu_;
  // The state itself goes with the worker (its last owner): its sockets close when it returns.
  std::list<std::pair<std::thread, std::shared_ptr<std::atomic<bool>>>> workers_;
};

// Never destroyed: a worker still inside Gloo when the process exits ends with it.
RetiredWorkers& retired_workers() {
  static auto* r = new RetiredWorkers;
  return *r;
}

}  // namespace

void stop_worker(std::thread worker, const std::shared_ptr<GlooState>& st) {
  RetiredWorkers& retired = retired_workers();
  retired.reap();
  bool stuck;
  {
    std::lock_guard<std::mutex> lock(st->mu);
    stuck = st->running && st->fault;
  }
  if (stuck) {
    retired.add(std::move(worker), st->worker_exited);
  } else {
    worker.join();
  }
}

void worker_loop(std::shared_ptr<GlooState> st) {
  for (;;) {
    std::shared_ptr<Task> t;
    std::exception_ptr broken;
    {
      std::unique_lock<std::mutex> lock(st->mu);
      st->cv.wait(lock, [&] { return st->stopping || !st->queue.empty(); });
      if (st->queue.empty()) {
        *st->worker_exited = true;
        return;
      }
      t = st->queue.front();
      st->queue.pop_front();
      if (st->fault) {
        broken = st->fault;
        t->work->done = true;
        t->work->error = st->fault;
        st->done_cv.notify_all();
      } else {
        st->running = true;
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
    {
      std::lock_guard<std::mutex> lock(st->mu);
      st->running = false;
    }
    complete(*st, *t, err);
    st->trace->ended(t->trace_id, err);
  }
}

}  // namespace tenax::detail
