#pragma once

// The server side of TcpStore: one poll() thread serving any number of clients. It can be
// hosted by a launcher (tenaxrun), by a standalone process (tenax-store), or by a rank.

#include <atomic>
#include <memory>
#include <string>
#include <thread>

#include "tenax/core/export.h"

namespace tenax {

class TENAX_API StoreServer {
 public:
  // Listens on host:port (port 0 picks a free one) and serves in a background thread.
  // Clients must present `token`. Throws StoreError when it cannot bind.
  StoreServer(const std::string& host, int port, std::string token);
  // Stops serving and closes every connection.
  ~StoreServer();
  StoreServer(const StoreServer&) = delete;
  StoreServer& operator=(const StoreServer&) = delete;

  // The port actually bound.
  int port() const { return port_; }

  // Connections open now.
  int clients() const;

  // Stops serving; idempotent.
  void stop();

 private:
  class Impl;
  std::unique_ptr<Impl> impl_;
  int port_ = 0;
};

}  // namespace tenax
