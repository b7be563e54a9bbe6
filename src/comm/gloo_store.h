#pragma once

// Adapts a tenax Store to Gloo's rendezvous::Store interface, so Gloo contexts rendezvous
// through the same TCP store (with its token and timeouts) as the rest of tenax. Internal.

#include <gloo/rendezvous/store.h>

#include <memory>

#include "tenax/store/store.h"

namespace tenax::detail {

class GlooStoreAdapter : public gloo::rendezvous::Store {
 public:
  GlooStoreAdapter(std::shared_ptr<tenax::Store> store, std::chrono::milliseconds timeout)
      : store_(std::move(store)), timeout_(timeout) {}

  void set(const std::string& key, const std::vector<char>& data) override {
    store_->set(key, std::string(data.begin(), data.end()));
  }
  std::vector<char> get(const std::string& key) override {
    std::string v = store_->get(key, timeout_);
    return std::vector<char>(v.begin(), v.end());
  }
  void wait(const std::vector<std::string>& keys) override { store_->wait(keys, timeout_); }
  void wait(const std::vector<std::string>& keys,
            const std::chrono::milliseconds& timeout) override {
    store_->wait(keys, timeout);
  }

 private:
  std::shared_ptr<tenax::Store> store_;
  std::chrono::milliseconds timeout_;
};

}  // namespace tenax::detail
