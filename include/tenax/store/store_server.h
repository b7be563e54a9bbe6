#pragma once

// The server side of TcpStore: one poll() thread serving any number of clients. It can be
// hosted by a launcher (tenaxrun), by a standalone process (tenax-store), or by a rank.

#include <atomic>
#include <chrono>
#include <cstddef>
#include <memory>
#include <string>
#include <thread>

#include "tenax/core/export.h"

namespace tenax {

// What the server accepts from a client. Before a client has presented the token (its first
// frame, the hello) it may send only that one small frame, within `hello_timeout`; at most
// `max_unauthenticated` such connections are held (beyond it the oldest is dropped). After it,
// a frame may be at most `max_frame` bytes. A client that breaks a limit is dropped and the
// reason logged (a warning naming its address; at most a few lines a second).
struct TENAX_API StoreLimits {
  size_t max_frame = size_t(64) << 20;
  std::chrono::milliseconds hello_timeout{5000};
  int max_unauthenticated = 64;
  // The largest hello: an op byte and a token of up to 1 KiB.
  static constexpr size_t kMaxHello = 1 + 4 + 1024;

  // The launch edge: the defaults, overridden by TENAX_STORE_MAX_FRAME (bytes),
  // TENAX_STORE_HELLO_TIMEOUT_MS and TENAX_STORE_MAX_UNAUTHENTICATED. Throws ConfigError naming
  // a variable that is not a positive integer.
  static StoreLimits from_environment();
};

class TENAX_API StoreServer {
 public:
  // Listens on host:port (port 0 picks a free one) and serves in a background thread.
  // Clients must present `token` (compared in constant time). Throws StoreError when it cannot
  // bind.
  StoreServer(const std::string& host, int port, std::string token,
              StoreLimits limits = {});
  // Stops serving and closes every connection.
  ~StoreServer();
  StoreServer(const StoreServer&) = delete;
  StoreServer& operator=(const StoreServer&) = delete;

  // The port actually bound.
  int port() const { return port_; }

  // Authenticated connections open now. Any thread.
  int clients() const;

  // Stops serving; idempotent. Any thread; the destructor on the owner's.
  void stop();

 private:
  class Impl;
  std::unique_ptr<Impl> impl_;
  int port_ = 0;
};

}  // namespace tenax
