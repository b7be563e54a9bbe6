#pragma once

// A key-value store for bootstrap and rendezvous. Values are byte strings. Every call that can
// block takes (or defaults to) a timeout; none blocks forever. No torch dependency.
// Thread rules: every Store is safe to call from several threads (calls on one client are
// serialized on its connection); a thread that blocks long (a wait) takes a clone() of its own
// so it does not hold up the others; interrupt() and close() from any thread.

#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "tenax/core/export.h"

namespace tenax {

class TENAX_API Store {
 public:
  virtual ~Store() = default;

  // Sets `key` to `value`, waking every waiter on `key`.
  virtual void set(const std::string& key, const std::string& value) = 0;

  // Returns the value of `key`, waiting up to `timeout` for it to be set.
  // Throws TimeoutError naming the key when it is still absent after `timeout`.
  virtual std::string get(const std::string& key, std::chrono::milliseconds timeout) = 0;
  std::string get(const std::string& key) { return get(key, timeout()); }

  // Returns the value of `key` now, or nullopt when absent. Never waits for the key.
  virtual std::optional<std::string> try_get(const std::string& key) = 0;

  // Atomically adds `delta` to the integer stored at `key` (absent counts as 0) and returns
  // the new value.
  virtual int64_t add(const std::string& key, int64_t delta) = 0;

  // Atomically: if the current value of `key` equals `expected` (an empty `expected` matches an
  // absent key), sets it to `desired`. Returns the value after the call either way.
  virtual std::string compare_set(const std::string& key, const std::string& expected,
                                  const std::string& desired) = 0;

  // Deletes `key`. Returns true iff it existed.
  virtual bool delete_key(const std::string& key) = 0;

  // Returns the keys that start with `prefix`, sorted.
  virtual std::vector<std::string> list(const std::string& prefix) = 0;

  // Waits until every key in `keys` is set. Throws TimeoutError naming the missing keys.
  virtual void wait(const std::vector<std::string>& keys, std::chrono::milliseconds timeout) = 0;

  // Waits until any key in `keys` is set; returns its index in `keys` and its value.
  // Throws TimeoutError naming the keys when none is set within `timeout`.
  virtual std::pair<size_t, std::string> wait_any(const std::vector<std::string>& keys,
                                                  std::chrono::milliseconds timeout) = 0;

  // Arranges for `key` to be set to `value` (if `key` is still absent) when this client goes
  // away without close(): the way the others learn that this process died. Several may be
  // registered; close() cancels them all. How soon after a death the key appears depends on
  // the backend: at once on the TCP store (its connection drops), within the lease's TTL on
  // etcd.
  virtual void set_on_disconnect(const std::string& key, const std::string& value) = 0;

  // How long after a client dies its set_on_disconnect keys may take to appear (an upper
  // bound): those who would wait for them wait no longer than this is worth.
  virtual std::chrono::milliseconds disconnect_notice() const = 0;

  // Opens a second, independent client of the same store (for a thread that blocks in a wait
  // while this one goes on serving calls). Throws StoreError when the store cannot be reached.
  virtual std::shared_ptr<Store> clone() const = 0;

  // Says goodbye (cancelling set_on_disconnect) and closes. Idempotent; never throws.
  virtual void close() noexcept = 0;

  // Unblocks a call in progress on another thread, which then throws StoreError. Never throws.
  virtual void interrupt() noexcept = 0;

  // Where the store is, for messages ("store at h1:29400", "etcd at h1:2379,h2:2379"). Never
  // holds credentials.
  virtual std::string describe() const = 0;

  // This end's IPv4 address on its connection to the store: where processes on other hosts
  // that reach the store the same way reach this one ("127.0.0.1" when the store is local;
  // empty if unknown).
  virtual std::string local_address() const = 0;

  // The default timeout for calls that do not take one.
  std::chrono::milliseconds timeout() const { return timeout_; }
  void set_timeout(std::chrono::milliseconds t) { timeout_ = t; }

 protected:
  std::chrono::milliseconds timeout_{30000};
};

// A client of a StoreServer over TCP. Thread-safe: calls are serialized on one connection.
// Every request is bounded by a deadline; losing the server is a StoreError naming its address.
class TENAX_API TcpStore : public Store {
 public:
  // Connects to host:port and authenticates with `token` (the server's shared secret).
  // Retries the connection until `timeout` passes. Throws StoreError when the server refuses
  // the token or cannot be reached in time.
  static std::shared_ptr<TcpStore> connect(const std::string& host, int port,
                                           const std::string& token,
                                           std::chrono::milliseconds timeout);
  ~TcpStore() override;

  void set(const std::string& key, const std::string& value) override;
  std::string get(const std::string& key, std::chrono::milliseconds timeout) override;
  using Store::get;
  std::optional<std::string> try_get(const std::string& key) override;
  int64_t add(const std::string& key, int64_t delta) override;
  std::string compare_set(const std::string& key, const std::string& expected,
                          const std::string& desired) override;
  bool delete_key(const std::string& key) override;
  std::vector<std::string> list(const std::string& prefix) override;
  void wait(const std::vector<std::string>& keys, std::chrono::milliseconds timeout) override;
  std::pair<size_t, std::string> wait_any(const std::vector<std::string>& keys,
                                          std::chrono::milliseconds timeout) override;
  // Registered with the server, which sets the key when this connection drops.
  void set_on_disconnect(const std::string& key, const std::string& value) override;
  // At once: the server sees the connection drop.
  std::chrono::milliseconds disconnect_notice() const override { return {}; }
  std::shared_ptr<Store> clone() const override;
  void close() noexcept override;
  void interrupt() noexcept override;
  std::string describe() const override;
  std::string local_address() const override { return local_address_; }

  const std::string& host() const { return host_; }
  int port() const { return port_; }
  const std::string& token() const { return token_; }

 private:
  TcpStore(std::string host, int port, std::string token, int fd);
  std::string call(const std::string& request, std::chrono::milliseconds wait_budget);
  std::string address() const;

  std::string host_;
  int port_;
  std::string token_;
  mutable std::mutex mu_;
  int fd_;
  bool closed_ = false;
  std::string local_address_;
};

}  // namespace tenax
