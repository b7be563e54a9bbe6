#include "tenax/comm/communicator.h"

#include <signal.h>

#include <mutex>

#include "comm/backend_communicator.h"
#include "comm/gloo_communicator.h"
#include "tenax/core/config.h"
#include "tenax/core/error.h"

#ifdef TENAX_HAS_NCCL
#include "comm/nccl_communicator.h"
#endif

#include <atomic>

namespace tenax {
namespace detail {
void CommIdentity::init(std::shared_ptr<Store> s, int r, int n, const CommOptions& opts) {
  rank = r;
  size = n;
  name = opts.name;
  prefix = "tenax/comm/" + opts.name;
  timeout = opts.timeout.count() > 0 ? opts.timeout : kDefaultTimeout;
  store = std::move(s);
}
}  // namespace detail

std::string to_string(Backend backend) { return backend == Backend::kGloo ? "gloo" : "nccl"; }

std::string to_string(ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum: return "sum";
    case ReduceOp::kAvg: return "avg";
    case ReduceOp::kMin: return "min";
    case ReduceOp::kMax: return "max";
    case ReduceOp::kProduct: return "prod";
  }
  return "?";
}

Backend parse_backend(const std::string& name) {
  if (name == "gloo") return Backend::kGloo;
  if (name == "nccl") return Backend::kNccl;
  throw ConfigError("unknown backend '" + name + "' (expected gloo or nccl)");
}

ReduceOp parse_reduce_op(const std::string& name) {
  for (ReduceOp op : {ReduceOp::kSum, ReduceOp::kAvg, ReduceOp::kMin, ReduceOp::kMax,
                      ReduceOp::kProduct}) {
    if (to_string(op) == name) return op;
  }
  if (name == "product") return ReduceOp::kProduct;
  throw ConfigError("unknown reduce op '" + name + "' (expected sum, avg, min, max or prod)");
}

bool nccl_available() {
#ifdef TENAX_HAS_NCCL
  return detail::nccl_device_count() > 0;
#else
  return false;
#endif
}


std::shared_ptr<Communicator> create_communicator(Backend backend,
                                                  std::shared_ptr<Store> store, int rank,
                                                  int size, CommOptions options) {
  if (size < 1) {
    throw ConfigError("world size must be at least 1 (got " + std::to_string(size) + ")");
  }
  if (rank < 0 || rank >= size) {
    throw ConfigError("rank " + std::to_string(rank) + " is out of range for world size " +
                      std::to_string(size));
  }
  if (!store) throw ConfigError("create_communicator needs a store");
  switch (backend) {
    case Backend::kGloo:
      return detail::create_gloo_communicator(std::move(store), rank, size, options);
    case Backend::kNccl:
#ifdef TENAX_HAS_NCCL
      return detail::create_nccl_communicator(std::move(store), rank, size, options);
#else
      throw ConfigError("the nccl backend was not built (CUDA toolkit or NCCL not found at "
                        "configure time); use the gloo backend");
#endif
  }
  throw ConfigError("unknown backend");
}

}  // namespace tenax
