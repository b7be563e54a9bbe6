// The worker thread of a Gloo communicator: runs the queued operations in order, one at a time,
// and completes their works; an operation that fails breaks the communicator.

#include <chrono>
#include <cstdlib>
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

  // Joins the workers that have returned; true when none is left.
  bool reap() {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto it = workers_.begin(); it != workers_.end();) {
      if (*it->second) {
        it->first.join();  // past its last statement
        it = workers_.erase(it);
      } else {
        ++it;
      }
    }
    return workers_.empty();
  }

 private:
  std::mutex mu_;
  // The state itself goes with the worker (its last owner): its sockets close when it returns.
  std::list<std::pair<std::thread, std::shared_ptr<std::atomic<bool>>>> workers_;
};

// How long an exiting process waits for retired workers to return (most are only naming the
// failure that broke their communicator, within a second).
constexpr auto kExitGrace = std::chrono::seconds(2);

// Never destroyed: at exit the workers that return within kExitGrace are joined; one still
// inside Gloo after that ends with the process.
RetiredWorkers& retired_workers() {
  static auto* r = [] {
    auto* list = new RetiredWorkers;
    std::atexit([] {
      const auto deadline = std::chrono::steady_clock::now() + kExitGrace;
      while (!retired_workers().reap() && std::chrono::steady_clock::now() < deadline) {
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
      }
    });
    return list;
  }();
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
      } else {
        st->running = true;
      }
    }
    // The flight record is closed before anyone can see the work done: the error object it
    // reads stays this thread's until then.
    if (broken) {
      st->trace->ended(t->trace_id, broken);
      complete(*st, *t, broken);
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
    st->trace->ended(t->trace_id, err);
    if (err) st->set_fault(err);
    {
      std::lock_guard<std::mutex> lock(st->mu);
      st->running = false;
    }
    complete(*st, *t, err);
  }
}

}  // namespace tenax::detail
