// The Gloo backend's all-reduce across hosts: the hosts found from the identities the
// shared-memory set-up published, and the three stages of the hierarchical all-reduce.

#include <gloo/allreduce.h>
#include <gloo/rendezvous/prefix_store.h>

#include <algorithm>
#include <map>

#include "comm/gloo_state.h"
#include "comm/gloo_store.h"
#include "tenax/core/logging.h"

namespace tenax::detail {

void ring_all_reduce(GlooState& st, const std::shared_ptr<gloo::rendezvous::Context>& ctx,
                     AllreduceCache& cache, const at::Tensor& in, at::Tensor& out, ReduceFn fn) {
  gloo::AllreduceOptions* o = cache.find(in, out, fn);
  if (o == nullptr) {
    auto fresh = std::make_unique<gloo::AllreduceOptions>(ctx);
    with_storage_type(in.scalar_type(), [&](auto tag) {
      using T = decltype(tag);
      if (!in.is_same(out)) fresh->setInput<T>(static_cast<T*>(in.data_ptr()), in.numel());
      fresh->setOutput<T>(static_cast<T*>(out.data_ptr()), out.numel());
    });
    fresh->setReduceFunction(fn);
    fresh->setTimeout(st.timeout);
    fresh->setMaxSegmentSize(kAllreduceSegmentBytes);
    o = cache.insert(in, out, fn, std::move(fresh));
  }
  gloo::allreduce(*o);
}

Hierarchy* hierarchy(GlooState& st) {
  if (st.hierarchy_tried) return st.hierarchy.get();
  st.hierarchy_tried = true;
  if (!st.shared_memory || st.size < 3) return nullptr;
  // shared_memory(st) ran first on every rank and published each rank's host identity.
  std::map<std::string, std::vector<int>> hosts;
  std::vector<std::string> identity(st.size);
  for (int r = 0; r < st.size; ++r) {
    identity[r] = st.store->get(st.prefix + "/shm/host/" + std::to_string(r), st.timeout);
    hosts[identity[r]].push_back(r);
  }
  if (hosts.size() < 2 || hosts.size() == static_cast<size_t>(st.size)) return nullptr;

  auto h = std::make_unique<Hierarchy>();
  h->local = hosts[identity[st.rank]];
  const int leader = h->local[0];
  const int local_rank =
      static_cast<int>(std::find(h->local.begin(), h->local.end(), st.rank) - h->local.begin());
  if (h->local.size() > 1) {
    h->shm =
        ShmCollectives::create(*st.store, st.prefix + "/hier/" + std::to_string(leader), local_rank,
                               static_cast<int>(h->local.size()), st.timeout, true);
  }
  if (st.rank == leader) {
    std::vector<int> leaders;
    for (const auto& [id, ranks] : hosts) leaders.push_back(ranks[0]);
    std::sort(leaders.begin(), leaders.end());
    const int index =
        static_cast<int>(std::find(leaders.begin(), leaders.end(), st.rank) - leaders.begin());
    h->leaders =
        std::make_shared<gloo::rendezvous::Context>(index, static_cast<int>(leaders.size()));
    h->leaders->setTimeout(st.timeout);
    GlooStoreAdapter adapter(st.store, st.timeout);
    gloo::rendezvous::PrefixStore prefixed(st.prefix + "/hier/leaders", adapter);
    h->leaders->connectFullMesh(prefixed, st.device);
  }
  // Every rank must have its groups before any uses them: a host whose segment could not be
  // made (a full /dev/shm) would leave its ranks out of the reduction.
  const std::string ok_key = st.prefix + "/hier/ok/";
  st.store->set(ok_key + std::to_string(st.rank), h->local.size() == 1 || h->shm ? "1" : "0");
  bool all_ok = true;
  for (int r = 0; r < st.size; ++r) {
    if (st.store->get(ok_key + std::to_string(r), st.timeout) != "1") all_ok = false;
  }
  if (!all_ok) return nullptr;
  if (st.rank == 0) {
    log(LogLevel::kDebug, st.who() + ": all_reduce through shared memory within each of " +
                              std::to_string(hosts.size()) + " hosts and a ring between their " +
                              "leaders");
  }
  st.hierarchy = std::move(h);
  return st.hierarchy.get();
}

void hierarchical_all_reduce(GlooState& st, Task& t, Hierarchy& h, const at::Tensor& in,
                             at::Tensor& out, ReduceFn fn, ReduceOp op) {
  // 1. The host's reduction, on every rank of the host.
  if (h.shm) {
    shm_all_reduce(st, t, *h.shm, h.local, in, out, fn, op);
  } else if (!in.is_same(out)) {
    out.copy_(in);
  }
  // 2. Between hosts: the leaders' ring over sockets.
  if (h.leaders) ring_all_reduce(st, h.leaders, h.cache, out, out, fn);
  // 3. The leader's result to its host: an all-reduce in which the others add nothing (0 for a
  // sum, 1 for a product; for min and max their host's value, which the result already
  // includes).
  if (h.shm) {
    if (st.rank != h.local[0]) {
      if (op == ReduceOp::kSum || op == ReduceOp::kAvg) out.zero_();
      if (op == ReduceOp::kProduct) out.fill_(1);
    }
    shm_all_reduce(st, t, *h.shm, h.local, out, out, fn, op);
  }
}

}  // namespace tenax::detail
