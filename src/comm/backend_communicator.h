#pragma once

// What the Gloo and NCCL communicators share: their identity (rank, size, name, timeout, store),
// the accessors that report it, argument-check contexts and the communicators split from them
// (internal).

#include <chrono>
#include <memory>
#include <string>

#include "comm/argument_checks.h"
#include "comm/split_children.h"
#include "tenax/comm/communicator.h"
#include "tenax/store/store.h"

namespace tenax::detail {

// Set at construction, read-only after. Each backend's shared state derives from it.
struct CommIdentity {
  int rank = 0, size = 1;
  std::string name;
  std::string prefix;  // the communicator's keys in the store: "tenax/comm/<name>"
  std::chrono::milliseconds timeout{30000};
  std::shared_ptr<Store> store;

  // Fills the members from the constructor's arguments; a zero timeout means the default.
  void init(std::shared_ptr<Store> s, int r, int n, const CommOptions& opts);
};

class TENAX_INTERNAL BackendCommunicator : public Communicator {
 public:
  int rank() const override { return identity().rank; }
  int size() const override { return identity().size; }
  const std::string& name() const override { return identity().name; }
  std::chrono::milliseconds timeout() const override { return identity().timeout; }

 protected:
  virtual const CommIdentity& identity() const = 0;

  // The context argument checks word their errors with.
  OpContext ctx(const char* op) const {
    const CommIdentity& id = identity();
    return OpContext{id.name, id.rank, id.size, op, backend() == Backend::kNccl};
  }

  SplitChildren children_;  // aborted by the backend's abort()
};

}  // namespace tenax::detail
