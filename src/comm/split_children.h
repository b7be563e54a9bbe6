#pragma once

// The communicators split from one communicator, which abort() aborts with it (internal).

#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "tenax/comm/communicator.h"

namespace tenax::detail {

// Holds weak references only: a child the caller has dropped is simply skipped. Safe to use
// from any thread.
class SplitChildren {
 public:
  void add(const std::shared_ptr<Communicator>& child) {
    std::lock_guard<std::mutex> lock(mu_);
    children_.push_back(child);
  }

  // Aborts every child still alive with `reason` (each aborts its own children in turn).
  void abort_all(const std::string& reason) {
    std::vector<std::weak_ptr<Communicator>> children;
    {
      std::lock_guard<std::mutex> lock(mu_);
      children = children_;
    }
    for (auto& weak : children) {
      if (auto c = weak.lock()) c->abort(reason);
    }
  }

 private:
  std::mutex mu_;
  std::vector<std::weak_ptr<Communicator>> children_;
};

}  // namespace tenax::detail
