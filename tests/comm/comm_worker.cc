// One rank of a multi-process communicator test. Usage: comm_worker SCENARIO
// Prints "PASS <scenario>" and exits 0 when every check holds; prints what failed and exits 1
// otherwise. Scenarios are chosen by the gtest drivers in this directory.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <algorithm>
#include <atomic>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <functional>
#include <iostream>
#include <map>
#include <string>
#include <thread>

#include "support/worker_main.h"
#include "tenax/comm/flight_recorder.h"
#include "tenax/core/config.h"
#include "tenax/core/logging.h"
#include "tenax/core/metrics.h"
#include "tenax/store/store_server.h"
#include "tenax/tenax.h"

using namespace tenax;
using Clock = std::chrono::steady_clock;

namespace {


double ms_since(Clock::time_point t) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t).count();
}

// Deterministic small-integer inputs: exact in every dtype, so any reduction order agrees.
at::Tensor input_for(int rank, int64_t n, at::ScalarType dtype, bool for_product) {
  at::Tensor i = at::arange(n, at::kLong);
  at::Tensor v = for_product ? (i + rank) % 5 - 2 : (i * 7 + (rank + 1) * 3) % 11 - 5;
  if (dtype == at::kByte) v = for_product ? (i + rank) % 3 : (i * 7 + (rank + 1) * 3) % 11;
  return v.to(dtype);
}

at::Tensor reference(const std::vector<at::Tensor>& per_rank, ReduceOp op, at::ScalarType dtype) {
  at::Tensor all = at::stack(per_rank).to(at::kDouble);
  at::Tensor r;
  switch (op) {
    case ReduceOp::kSum:
    case ReduceOp::kAvg: r = all.sum(0); break;
    case ReduceOp::kProduct: r = all.prod(0); break;
    case ReduceOp::kMin: r = std::get<0>(all.min(0)); break;
    case ReduceOp::kMax: r = std::get<0>(all.max(0)); break;
  }
  r = r.to(dtype);
  if (op == ReduceOp::kAvg) {
    if (at::isFloatingType(dtype)) {
      r.div_(static_cast<int64_t>(per_rank.size()));
    } else {
      r.div_(static_cast<int64_t>(per_rank.size()), "trunc");
    }
  }
  return r;
}

bool same(const at::Tensor& a, const at::Tensor& b) {
  if (a.sizes() != b.sizes() || a.scalar_type() != b.scalar_type()) return false;
  if (a.numel() == 0) return true;
  if (at::isFloatingType(a.scalar_type())) {
    return at::allclose(a.to(at::kDouble), b.to(at::kDouble), 1e-2, 1e-3);
  }
  return at::equal(a, b);
}

std::string name(at::ScalarType t) { return c10::toString(t); }

// Every collective x dtype x count, in place and out of place, against the single-process
// reference computed from all ranks' (deterministic) inputs.
void scenario_collectives(World& w) {
  Communicator& c = *w.comm;
  const int n = c.size(), r = c.rank();
  const std::vector<at::ScalarType> dtypes = {at::kFloat, at::kDouble, at::kHalf, at::kBFloat16,
                                              at::kInt,   at::kLong,   at::kByte};
  const std::vector<int64_t> counts = {0, 1, 7, 1031};
  int checked = 0;
  for (auto dt : dtypes) {
    for (int64_t count : counts) {
      const std::string tag = name(dt) + " x " + std::to_string(count);
      for (ReduceOp op : {ReduceOp::kSum, ReduceOp::kAvg, ReduceOp::kMin, ReduceOp::kMax,
                          ReduceOp::kProduct}) {
        const bool prod = op == ReduceOp::kProduct;
        std::vector<at::Tensor> ins;
        for (int k = 0; k < n; ++k) ins.push_back(input_for(k, count, dt, prod));
        at::Tensor want = reference(ins, op, dt);
        at::Tensor t = ins[r].clone();
        c.all_reduce(t, op);
        CHECK(same(t, want), "all_reduce in-place " << to_string(op) << " " << tag);
        at::Tensor out = at::full({count}, 99, dt);
        c.all_reduce(ins[r], out, op);
        CHECK(same(out, want), "all_reduce out-of-place " << to_string(op) << " " << tag);
        CHECK(same(ins[r], input_for(r, count, dt, prod)), "all_reduce changed its input");
        // reduce_scatter: input of n*count elements.
        std::vector<at::Tensor> big;
        for (int k = 0; k < n; ++k) big.push_back(input_for(k, count * n, dt, prod));
        at::Tensor rs = at::empty({count}, dt);
        c.reduce_scatter(rs, big[r], op);
        at::Tensor rs_want = reference(big, op, dt).narrow(0, r * count, count);
        CHECK(same(rs, rs_want), "reduce_scatter " << to_string(op) << " " << tag);
        at::Tensor rs_in = big[r].clone();  // in place: output is this rank's chunk of input
        c.reduce_scatter(rs_in.narrow(0, r * count, count), rs_in, op);
        CHECK(same(rs_in.narrow(0, r * count, count), rs_want),
              "reduce_scatter in-place " << to_string(op) << " " << tag);
        // reduce to a root in the middle.
        const int root = n / 2;
        at::Tensor red = ins[r].clone();
        c.reduce(red, root, op);
        CHECK(same(red, r == root ? want : ins[r]), "reduce " << to_string(op) << " " << tag);
        checked += 4;
      }
      std::vector<at::Tensor> ins;
      for (int k = 0; k < n; ++k) ins.push_back(input_for(k, count, dt, false));
      at::Tensor gathered_want = at::cat(ins);
      at::Tensor g = at::zeros({count * n}, dt);
      c.all_gather(g, ins[r]);
      CHECK(same(g, gathered_want), "all_gather out-of-place " << tag);
      at::Tensor g2 = at::zeros({count * n}, dt);
      g2.narrow(0, r * count, count).copy_(ins[r]);
      c.all_gather(g2, g2.narrow(0, r * count, count));
      CHECK(same(g2, gathered_want), "all_gather in-place " << tag);
      at::Tensor b = r == n - 1 ? ins[r].clone() : at::zeros({count}, dt);
      c.broadcast(b, n - 1);
      CHECK(same(b, ins[n - 1]), "broadcast " << tag);
      // all_to_all, equal chunks: chunk j of rank k's input goes to rank j.
      std::vector<at::Tensor> a2a_in;
      for (int k = 0; k < n; ++k) a2a_in.push_back(input_for(k, count * n, dt, false));
      at::Tensor a2a = at::empty({count * n}, dt);
      c.all_to_all(a2a, a2a_in[r]);
      std::vector<at::Tensor> a2a_want;
      for (int k = 0; k < n; ++k) a2a_want.push_back(a2a_in[k].narrow(0, r * count, count));
      CHECK(same(a2a, at::cat(a2a_want)), "all_to_all " << tag);
      checked += 4;
    }
    // all_to_all with uneven splits: rank k sends (k + j) % 3 + 1 elements to rank j.
    std::vector<int64_t> in_splits, out_splits;
    for (int j = 0; j < n; ++j) {
      in_splits.push_back((r + j) % 3 + 1);
      out_splits.push_back((j + r) % 3 + 1);
    }
    int64_t in_total = 0, out_total = 0;
    for (int j = 0; j < n; ++j) in_total += in_splits[j], out_total += out_splits[j];
    auto send_from = [&](int k) { return input_for(k, 64, dt, false); };
    at::Tensor v_out = at::empty({out_total}, dt);
    c.all_to_all(v_out, send_from(r).narrow(0, 0, in_total), out_splits, in_splits);
    std::vector<at::Tensor> v_want;
    for (int k = 0; k < n; ++k) {
      int64_t off = 0;
      for (int j = 0; j < r; ++j) off += (k + j) % 3 + 1;
      v_want.push_back(send_from(k).narrow(0, off, (k + r) % 3 + 1));
    }
    CHECK(same(v_out, at::cat(v_want)), "all_to_all uneven " << name(dt));
    // Point to point around the ring, posted asynchronously so the ring cannot deadlock.
    if (n > 1) {
      at::Tensor mine = input_for(r, 1031, dt, false);
      at::Tensor got = at::zeros({1031}, dt);
      auto s = c.send_async(mine, (r + 1) % n, 7);
      auto rv = c.recv_async(got, (r - 1 + n) % n, 7);
      s->wait();
      rv->wait();
      CHECK(same(got, input_for((r - 1 + n) % n, 1031, dt, false)), "send/recv ring " << name(dt));
    }
    checked += 2;
  }
  // Tensors larger than one shared-memory slot (4 MiB) go through it in several chunks.
  {
    const int64_t count = (3 << 20) / n + 5;  // floats per rank: 12 MiB across all pieces
    std::vector<at::Tensor> pieces, ins;
    for (int k = 0; k < n; ++k) {
      pieces.push_back(input_for(k, count * n, at::kFloat, false));
      ins.push_back(input_for(k, count, at::kFloat, false));
    }
    at::Tensor rs = at::empty({count}, at::kFloat);
    c.reduce_scatter(rs, pieces[r]);
    CHECK(same(rs, reference(pieces, ReduceOp::kSum, at::kFloat).narrow(0, r * count, count)),
          "reduce_scatter of " << count << " floats a rank");
    at::Tensor g = at::empty({count * n}, at::kFloat);
    c.all_gather(g, ins[r]);
    CHECK(same(g, at::cat(ins)), "all_gather of " << count << " floats a rank");
  }
  // Non-contiguous tensors are handled (staged through a contiguous copy).
  at::Tensor base = at::arange(12, at::kFloat).reshape({3, 4}) + r;
  at::Tensor nc = base.t();
  c.all_reduce(nc);
  at::Tensor nc_want = (at::arange(12, at::kFloat).reshape({3, 4}) * n + n * (n - 1) / 2).t();
  CHECK(at::equal(nc, nc_want), "all_reduce of a non-contiguous tensor");
  // Async forms complete in issue order.
  std::vector<WorkHandle> works;
  std::vector<at::Tensor> ts;
  for (int k = 0; k < 8; ++k) {
    ts.push_back(at::full({1000}, k + r, at::kFloat));
    works.push_back(c.all_reduce_async(ts.back()));
  }
  for (int k = 0; k < 8; ++k) {
    works[k]->wait(std::chrono::seconds(30));
    CHECK(works[k]->is_completed(), "async work completed");
    CHECK(ts[k].eq(float(k * n + n * (n - 1) / 2)).all().item<bool>(), "async all_reduce " << k);
  }
  c.barrier();
  std::cout << "checked " << checked << " collective cases on " << n << " ranks" << std::endl;
}

void scenario_split(World& w) {
  Communicator& c = *w.comm;
  const int r = c.rank(), n = c.size();
  auto sub = c.split(r % 2, -r);  // reverse order inside each group
  int members = (n - (r % 2) + 1) / 2;
  CHECK(sub != nullptr, "split returned a communicator");
  CHECK(sub->size() == members, "split size " << sub->size() << " want " << members);
  int higher = 0;  // same-parity ranks above me come first (key = -rank)
  for (int k = r + 2; k < n; k += 2) ++higher;
  CHECK(sub->rank() == higher, "split rank " << sub->rank() << " want " << higher);
  at::Tensor t = at::full({5}, r, at::kLong);
  sub->all_reduce(t);
  long want = 0;
  for (int k = r % 2; k < n; k += 2) want += k;
  CHECK(t[0].item<long>() == want, "split all_reduce " << t[0].item<long>() << " want " << want);
  auto none = c.split(r == 0 ? -1 : 1, r);
  CHECK((r == 0) == (none == nullptr), "negative color gives nullptr");
  if (none) {
    at::Tensor x = at::ones({3});
    none->all_reduce(x);
    CHECK(x[0].item<float>() == float(n - 1), "group without rank 0");
  }
  c.barrier();
}

// Rank VICTIM kills itself with SIGKILL during an all_reduce loop. The others must see
// PeerLostError naming it within 1 s, then rebuild a communicator without it and go on.
// SIGPIPE stays the program's (its default here): a survivor's write to the dead peer's socket
// is an error, not its death.
void scenario_kill(World& w) {
  Communicator& c = *w.comm;
  struct sigaction pipe {};
  sigaction(SIGPIPE, nullptr, &pipe);
  CHECK(pipe.sa_handler == SIG_DFL, "creating a communicator changed SIGPIPE's disposition");
  const int victim = std::atoi(std::getenv("VICTIM"));
  at::Tensor t = at::ones({262144});
  Clock::time_point started;
  try {
    for (int it = 0; it < 100000; ++it) {
      if (it == 20 && c.rank() == victim) raise(SIGKILL);
      started = Clock::now();
      c.all_reduce(t);
      t.fill_(1);
    }
    CHECK(false, "the loop finished although a rank died");
  } catch (const PeerLostError& e) {
    double ms = ms_since(started);
    std::cout << "rank " << c.rank() << " caught PeerLostError after " << ms << " ms: " << e.what()
              << std::endl;
    CHECK(e.peer() == victim, "lost peer " << e.peer() << " want " << victim);
    CHECK(ms < 1000, "detection took " << ms << " ms");
  }
  // Later operations on the broken communicator fail at once.
  try {
    c.all_reduce(t);
    CHECK(false, "broken communicator accepted an operation");
  } catch (const PeerLostError&) {
  }
  CommOptions opts;
  opts.name = "world.gen1";
  int new_rank = c.rank() < victim ? c.rank() : c.rank() - 1;
  auto fresh = create_communicator(Backend::kGloo, w.store, new_rank, c.size() - 1, opts);
  at::Tensor x = at::ones({1031});
  fresh->all_reduce(x);
  CHECK(x.eq(float(c.size() - 1)).all().item<bool>(), "all_reduce among survivors");
  fresh->barrier();
  std::cout << "RECOVERED as rank " << new_rank << " of " << fresh->size() << std::endl;
}

// Rank VICTIM stops (SIGSTOP). The others must get TimeoutError naming it after the timeout.
void scenario_hang(World& w) {
  Communicator& c = *w.comm;
  const int victim = std::atoi(std::getenv("VICTIM"));
  at::Tensor t = at::ones({1024});
  Clock::time_point started;
  try {
    for (int it = 0; it < 100000; ++it) {
      if (it == 10 && c.rank() == victim) raise(SIGSTOP);
      started = Clock::now();
      c.all_reduce(t);
    }
  } catch (const TimeoutError& e) {
    double ms = ms_since(started);
    std::cout << "rank " << c.rank() << " caught TimeoutError after " << ms << " ms: " << e.what()
              << std::endl;
    CHECK(e.peers() == std::vector<int>{victim}, "timeout names rank " << victim);
    const double limit = c.timeout().count();
    CHECK(ms >= limit * 0.9 && ms < limit + 3000, "timed out after " << ms << " ms");
  }
}

// abort() from another thread ends a receive that would never complete, and the peer blocked in
// a barrier learns of it.
void scenario_abort(World& w) {
  Communicator& c = *w.comm;
  auto started = Clock::now();
  if (c.rank() == 0) {
    std::thread killer([&] {
      std::this_thread::sleep_for(std::chrono::milliseconds(300));
      c.abort("test abort");
    });
    at::Tensor t = at::zeros({10});
    try {
      c.recv(t, 1);
      CHECK(false, "recv returned without data");
    } catch (const AbortedError& e) {
      std::cout << "rank 0 aborted after " << ms_since(started) << " ms: " << e.what() << std::endl;
    }
    killer.join();
  } else {
    try {
      c.barrier();
      CHECK(false, "barrier passed without rank 0");
    } catch (const AbortedError& e) {
      std::cout << "rank " << c.rank() << " saw abort after " << ms_since(started)
                << " ms: " << e.what() << std::endl;
      CHECK(std::string(e.what()).find("rank 0") != std::string::npos, "abort names rank 0");
    }
  }
  CHECK(ms_since(started) < 5000, "abort took " << ms_since(started) << " ms");
}

int thread_count() {
  int n = 0;
  for ([[maybe_unused]] const auto& e : std::filesystem::directory_iterator("/proc/self/task")) ++n;
  return n;
}

// Rank 1 aborts a communicator whose all_reduce is inside Gloo, waiting on rank 0 that never
// joins it: destroying the communicator returns at once, and its worker thread is gone by the
// operation's timeout (TENAX_TIMEOUT, 3 s here).
void scenario_destroy_aborted(World& w) {
  Communicator& c = *w.comm;
  at::Tensor warm = at::ones({1 << 16});
  c.all_reduce(warm);  // the process's own threads (Gloo's device loop, ATen's pool) exist now
  const int before = thread_count();
  auto child = c.split(0, c.rank());
  if (c.rank() == 1) {
    {
      at::Tensor t = at::ones({1 << 16});
      auto work = child->broadcast_async(t, 0);  // from rank 0, which never sends it
      std::this_thread::sleep_for(std::chrono::milliseconds(300));  // inside Gloo by now
      child->abort("test abort");
      try {
        work->wait();
        CHECK(false, "the broadcast completed without rank 0");
      } catch (const AbortedError&) {
      }
    }  // a work handle keeps its communicator's state (and Gloo's device thread) alive
    const auto started = Clock::now();
    child.reset();
    const double destroy_ms = ms_since(started);
    std::cout << "rank 1: destroyed in " << destroy_ms << " ms" << std::endl;
    CHECK(destroy_ms < 1000, "destroying took " << destroy_ms << " ms");
    // Rank 0 keeps its end of the child open: the broadcast ends by its timeout alone.
    const auto destroyed = Clock::now();
    while (thread_count() > before && ms_since(destroyed) < 8000) {
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    std::cout << "rank 1: threads back to " << thread_count() << " of " << before << " after "
              << ms_since(destroyed) << " ms" << std::endl;
    CHECK(thread_count() <= before, "threads left: " << thread_count() << " > " << before);
  } else {
    // Rank 1 waits about the timeout (3 s) and a second for the blame; the barrier below has
    // the same timeout on both sides of this pause.
    std::this_thread::sleep_for(std::chrono::seconds(5));
  }
  c.barrier();
  child.reset();
}

// Calls on a communicator that is already broken fail at once, and the metrics count them.
void scenario_refused_counted(World& w) {
  Communicator& c = *w.comm;
  auto child = c.split(0, c.rank());
  if (c.rank() == 1) {
    child->abort("test abort");
    for (int i = 0; i < 2; ++i) {
      at::Tensor t = at::ones({4});
      try {
        child->all_reduce(t);
        CHECK(false, "an all_reduce on an aborted communicator went ahead");
      } catch (const AbortedError&) {
      }
    }
    const std::string text = metrics::registry().render();
    std::string counted;
    for (size_t at = text.find("tenax_comm_errors_total{"); at != std::string::npos;
         at = text.find("tenax_comm_errors_total{", at + 1)) {
      const std::string line = text.substr(at, text.find('\n', at) - at);
      if (line.find("op=\"all_reduce\"") != std::string::npos &&
          line.find("error=\"aborted\"") != std::string::npos) {
        counted = line;
      }
    }
    std::cout << "rank 1: " << counted << std::endl;
    CHECK(counted.size() > 2 && counted.substr(counted.size() - 2) == " 2",
          "refused calls not counted: '" << counted << "'");
  }
  c.barrier();
  child.reset();
}

template <class E>
void expect_error(const std::function<void()>& f, const std::vector<std::string>& words,
                  const std::string& what) {
  try {
    f();
    CHECK(false, what << ": no error");
  } catch (const E& e) {
    std::string msg = e.what();
    for (const auto& word : words) {
      CHECK(msg.find(word) != std::string::npos, what << ": message lacks '" << word << "': " << msg);
    }
  } catch (const std::exception& e) {
    CHECK(false, what << ": wrong error type: " << e.what());
  }
}

void scenario_bad_input(World& w) {
  Communicator& c = *w.comm;
  const std::string me = "rank " + std::to_string(c.rank());
  at::Tensor t = at::ones({4});
  expect_error<ConfigError>([&] { c.broadcast(t, 7); }, {"root 7", me}, "root out of range");
  expect_error<ConfigError>([&] { c.reduce(t, -1); }, {"root -1", me}, "negative root");
  expect_error<ConfigError>([&] { c.send(t, c.rank()); }, {"itself", me}, "send to self");
  expect_error<ConfigError>([&] { c.all_gather(at::ones({3}), t); }, {"output", me},
                            "all_gather size");
  expect_error<ConfigError>([&] { c.reduce_scatter(at::ones({3}), t); }, {"input", me},
                            "reduce_scatter size");
  expect_error<ConfigError>([&] { c.all_reduce(at::ones({4}, at::kBool)); }, {"dtype", "Bool"},
                            "unsupported dtype");
  expect_error<ConfigError>([&] { c.all_reduce(t, at::ones({4}, at::kDouble)); },
                            {"dtypes must match"}, "dtype mismatch in/out");
  expect_error<ConfigError>([&] { c.all_to_all(at::ones({6}), at::ones({6}), {1, 1}, {}); },
                            {"output_splits"}, "bad splits");
  expect_error<ConfigError>([&] { create_communicator(Backend::kGloo, w.store, 5, 4); },
                            {"rank 5", "world size 4"}, "rank >= world");
  expect_error<ConfigError>([&] { create_communicator(Backend::kGloo, w.store, 0, 0); },
                            {"world size"}, "world size 0");
  if (!nccl_available()) {
    expect_error<ConfigError>([&] { create_communicator(Backend::kNccl, w.store, 0, 1); },
                              {"nccl"}, "nccl without a GPU");
  }
  // The communicator is still healthy after rejected calls.
  c.all_reduce(t);
  CHECK(t[0].item<float>() == float(c.size()), "all_reduce after bad input");
  // Mismatched counts on a large tensor are always caught (the check is cheap there).
  at::Tensor big = at::ones({(c.rank() == 2 ? 1 : 0) + (4 << 20)});
  expect_error<ConfigError>([&] { c.all_reduce(big); }, {"rank 2", "4194305 x Float"},
                            "mismatched large counts");
  // Ranks of one host all-reduce through shared memory, which compares counts and dtypes at
  // no cost: small mismatches are caught there without the debug flag, never reduced.
  {
    CommOptions shm_opts;
    shm_opts.name = "world.shm";
    auto shm = create_communicator(Backend::kGloo, w.store, c.rank(), c.size(), shm_opts);
    at::Tensor small = at::ones({c.rank() == 1 ? 5 : 4});
    expect_error<ConfigError>([&] { shm->all_reduce(small); },
                              {"does not match rank " + std::string(c.rank() == 1 ? "0" : "1"),
                               c.rank() == 1 ? "4 x Float" : "5 x Float"},
                              "mismatched small counts over shared memory");
  }
  // Small ones are caught when the communicator checks every call (TENAX_DEBUG_COLLECTIVES).
  CommOptions opts;
  opts.name = "world.debug";
  opts.debug_collectives = true;
  auto fresh = create_communicator(Backend::kGloo, w.store, c.rank(), c.size(), opts);
  at::Tensor odd = at::ones({c.rank() == 1 ? 5 : 4});
  expect_error<ConfigError>([&] { fresh->all_reduce(odd); }, {"rank 1", "5 x Float"},
                            "mismatched counts");
}

// Rank 1 waits on the store while the store's host (rank 0 here) kills itself: the wait must end
// with a StoreError soon, not at the 60 s timeout.
// communication_wait_time() is the calling thread's: rank 0 waits 300 ms in an all_reduce on
// a thread of its own (rank 1 joins late) while its main thread's total does not move.
void scenario_wait_time_per_thread(World& w) {
  CommOptions opts;
  opts.name = "waittime";
  auto c = create_communicator(Backend::kGloo, w.store, w.rank, w.size, opts);
  const auto main_before = tenax::communication_wait_time();
  std::chrono::nanoseconds waited{0};
  std::thread background([&] {
    const auto before = tenax::communication_wait_time();
    if (w.rank == 1) std::this_thread::sleep_for(std::chrono::milliseconds(300));
    at::Tensor t = at::ones({16});
    c->all_reduce(t);
    waited = tenax::communication_wait_time() - before;
  });
  background.join();
  const auto main_waited = tenax::communication_wait_time() - main_before;
  CHECK(main_waited.count() == 0, "the main thread was charged " << main_waited.count() << " ns");
  if (w.rank == 0) {
    CHECK(waited > std::chrono::milliseconds(250), "the waiting thread was charged only "
                                                       << waited.count() << " ns");
  }
}

// Rank 0 of a torchrun-style launch started the store (a process of its own) and dies: the
// others go on using it.
void scenario_store_starter_dies(World& w) {
  CHECK(w.store_server == nullptr, "rank " << w.rank << " hosts the store in-process");
  if (w.rank == 0) {
    w.store->set("ready", "1");
    w.store->get("go", std::chrono::seconds(30));
    raise(SIGKILL);
  }
  w.store->get("ready", std::chrono::seconds(30));
  w.store->set("go", "1");
  std::this_thread::sleep_for(std::chrono::milliseconds(300));  // rank 0 is gone by now
  w.store->set("after", "1");
  CHECK(w.store->get("after", std::chrono::seconds(5)) == "1", "the store lost a key");
  std::cout << "store outlived rank 0" << std::endl;
}

// The NCCL backend on CUDA tensors, against the same references. Exits 77 (skip) without a
// GPU or without the NCCL backend in this build.
void scenario_nccl(World& w) {
  if (!nccl_available()) {
    std::cout << "SKIP nccl: no CUDA device or NCCL backend" << std::endl;
    std::exit(77);
  }
  CommOptions opts;
  opts.name = "nccl";
  auto c = create_communicator(Backend::kNccl, w.store, w.rank, w.size, opts);
  const int n = c->size(), r = c->rank();
  for (auto dt : {at::kFloat, at::kHalf, at::kBFloat16, at::kInt}) {
    for (int64_t count : {int64_t(1), int64_t(1031)}) {
      std::vector<at::Tensor> ins;
      for (int k = 0; k < n; ++k) ins.push_back(input_for(k, count, dt, false));
      at::Tensor t = ins[r].to(at::kCUDA);
      c->all_reduce(t);
      CHECK(same(t.cpu(), reference(ins, ReduceOp::kSum, dt)), "nccl all_reduce " << name(dt));
      at::Tensor g = at::zeros({count * n}, dt).to(at::kCUDA);
      c->all_gather(g, ins[r].to(at::kCUDA));
      CHECK(same(g.cpu(), at::cat(ins)), "nccl all_gather " << name(dt));
      at::Tensor b = (r == 0 ? ins[0] : at::zeros({count}, dt)).to(at::kCUDA);
      c->broadcast(b, 0);
      CHECK(same(b.cpu(), ins[0]), "nccl broadcast " << name(dt));
    }
  }
  // A CPU tensor on the NCCL backend is a clear error.
  expect_error<ConfigError>([&] { c->all_reduce(at::ones({4})); }, {"CUDA", "rank"},
                            "CPU tensor on nccl");
  c->barrier();
}

std::string read_text(const std::string& path) {
  std::ifstream in(path);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

// The tenax-store process listening on `port` (its command line names it), 0 when none.
pid_t store_process_on(int port) {
  for (const auto& entry : std::filesystem::directory_iterator("/proc")) {
    const std::string name = entry.path().filename();
    if (name.find_first_not_of("0123456789") != std::string::npos) continue;
    std::string cmdline = read_text(entry.path().string() + "/cmdline");
    std::replace(cmdline.begin(), cmdline.end(), '\0', ' ');
    if (cmdline.find("tenax-store") != std::string::npos &&
        cmdline.find("--port " + std::to_string(port) + " ") != std::string::npos) {
      return static_cast<pid_t>(std::stol(name));
    }
  }
  return 0;
}

// Rank 0 of a one-rank torchrun-style launch (MASTER_PORT set) starts the store while this
// process already runs LibTorch's threads (its intra-op pool, and a thread of ours computing):
// the store must be the tenax-store program, executed rather than forked from this process,
// outside this process's family, with no LibTorch in its memory.
int store_beside_threads() {
  at::set_num_threads(4);
  std::atomic<bool> stop{false};
  std::thread busy([&] {
    at::Tensor a = at::rand({96, 96});
    while (!stop) a = at::mm(a, a).tanh_();
  });
  at::Tensor x = at::rand({1 << 20});
  (void)x.sum().item<float>();  // the intra-op pool is up
  int threads = 0;
  for (const auto& t : std::filesystem::directory_iterator("/proc/self/task")) {
    (void)t;
    ++threads;
  }
  CHECK(threads >= 3, "only " << threads << " threads before the store starts");
  World w = tenax::connect();
  CHECK(w.store_server == nullptr, "the store was hosted in-process");
  w.store->set("beside", "threads");
  CHECK(w.store->get("beside", std::chrono::seconds(5)) == "threads", "the store lost a key");
  const pid_t store = store_process_on(w.info.store_port);
  CHECK(store > 0, "no tenax-store process listens on port " << w.info.store_port);
  if (store > 0) {
    const std::string exe = std::filesystem::read_symlink("/proc/" + std::to_string(store) +
                                                          "/exe");
    CHECK(std::filesystem::path(exe).filename() == "tenax-store", "the store runs " << exe);
    const std::string maps = read_text("/proc/" + std::to_string(store) + "/maps");
    CHECK(maps.find("libtorch") == std::string::npos, "the store process maps LibTorch");
    const std::string status = read_text("/proc/" + std::to_string(store) + "/status");
    const size_t ppid_at = status.find("PPid:");
    const pid_t parent = ppid_at == std::string::npos
                             ? -1
                             : static_cast<pid_t>(std::stol(status.substr(ppid_at + 5)));
    CHECK(parent != ::getpid(), "the store is this process's child");
    const size_t rss_at = status.find("VmRSS:");
    std::cout << "store pid " << store << " (" << exe << ", " << threads
              << " threads here when it started): "
              << (rss_at == std::string::npos ? "?" : status.substr(rss_at + 6, 12)) << " resident"
              << std::endl;
    ::kill(store, SIGKILL);  // what the test made, removed
  }
  stop = true;
  busy.join();
  return tenax::testing::worker_exit("store_beside_threads");
}

// Run with TENAX_TIMEOUT=7, TENAX_LOG_FORMAT=json, TENAX_FLIGHT_DIR and TENAX_STORE_MAX_FRAME
// set: what a layer is given is its options; the environment reaches it only where the launch
// edge (connect(), the from_environment builders) builds them.
int launch_edge() {
  CHECK(!tenax::log_options_set() && !tenax::json_logs(), "logging was configured before connect");
  CHECK(!tenax::flight_recorder_options_set(), "the flight recorder was configured before connect");
  CHECK(tenax::dump_flight_records("before connect").empty(), "a dump had a directory already");
  World w = tenax::connect();
  CHECK(tenax::log_options_set() && tenax::json_logs(), "connect did not apply TENAX_LOG_FORMAT");
  CHECK(!tenax::dump_flight_records("after connect").empty(),
        "connect did not apply TENAX_FLIGHT_DIR");
  tenax::CommOptions plain;
  plain.name = "plain";
  auto a = tenax::create_communicator(tenax::Backend::kGloo, w.store, 0, 1, plain);
  CHECK(a->timeout() == tenax::kDefaultTimeout,
        "a communicator given no timeout took " << a->timeout().count() << " ms");
  tenax::CommOptions from_env = tenax::CommOptions::from_environment();
  from_env.name = "from_env";
  auto b = tenax::create_communicator(tenax::Backend::kGloo, w.store, 0, 1, from_env);
  CHECK(b->timeout() == std::chrono::seconds(7),
        "CommOptions::from_environment gave " << b->timeout().count() << " ms");
  CHECK(tenax::StoreLimits{}.max_frame == (size_t(64) << 20), "StoreLimits{} read the environment");
  CHECK(tenax::StoreLimits::from_environment().max_frame == (size_t(1) << 20),
        "StoreLimits::from_environment missed TENAX_STORE_MAX_FRAME");
  // A program's own choice stands: init() after it keeps it.
  tenax::set_log_options({tenax::LogLevel::kWarning, false});
  World again = tenax::init();
  CHECK(!tenax::json_logs(), "init overrode the program's log options");
  CHECK(again.comm->timeout() == std::chrono::seconds(7), "init's world communicator took "
                                                              << again.comm->timeout().count()
                                                              << " ms");
  return tenax::testing::worker_exit("launch_edge");
}

}  // namespace

int main(int argc, char** argv) {
  if (argc > 1 && std::string(argv[1]) == "store_beside_threads") return store_beside_threads();
  if (argc > 1 && std::string(argv[1]) == "launch_edge") return launch_edge();
  tenax::testing::WorkerOptions options;
  options.barrier_at_end = false;  // failure scenarios end with a broken world communicator
  return tenax::testing::worker_main(
      argc, argv,
      {{"collectives", scenario_collectives},
       {"split", scenario_split},
       {"kill", scenario_kill},
       {"hang", scenario_hang},
       {"abort", scenario_abort},
       {"destroy_aborted", scenario_destroy_aborted},
       {"refused_counted", scenario_refused_counted},
       {"bad_input", scenario_bad_input},
       {"store_starter_dies", scenario_store_starter_dies},
       {"wait_time_per_thread", scenario_wait_time_per_thread},
       {"nccl", scenario_nccl},
       {"init",
        [](World& w) {
          std::cout << "launcher=" << w.info.launcher << " rank=" << w.rank << " size=" << w.size
                    << " local_rank=" << w.local_rank << std::endl;
          at::Tensor t = at::ones({3});
          w.comm->all_reduce(t);
          CHECK(t[0].item<float>() == float(w.size), "init all_reduce");
        }}},
      options);
}
