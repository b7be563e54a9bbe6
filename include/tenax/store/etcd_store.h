#pragma once

// A Store on an etcd v3 cluster, reached through etcd's JSON gateway (HTTP/1.1 with libcurl):
// no single process whose loss ends the job. Every client fails over between the listed
// members. No torch dependency.

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "tenax/core/export.h"
#include "tenax/store/store.h"

namespace tenax {

namespace detail {
class EtcdClient;
}

struct TENAX_API EtcdOptions {
  // The cluster's client endpoints, "host:port" each; tried in turn (at least one).
  std::vector<std::string> endpoints;
  // Every key lives under this prefix (one namespace per job on a shared cluster).
  std::string prefix = "tenax/";
  // etcd user/password authentication; empty `user` sends no credentials. The password is
  // never logged or put in a message.
  std::string user;
  std::string password;
  // TLS: a CA file switches the endpoints to https; a client certificate and key are sent
  // where given. `tls` (an "etcds://" address) requires a CA file.
  bool tls = false;
  std::string ca_file;
  std::string cert_file;
  std::string key_file;
  // Lease TTL for set_on_disconnect: how long after a client's death its keys appear. Long
  // enough that a loaded client's keep-alives (every TTL/3) never let it lapse by accident.
  std::chrono::seconds lease_ttl{5};
  // The cluster's election timeout (etcd's --election-timeout, 1 s by default). A call that
  // finds a majority of the members up but no leader (an election in progress) keeps trying for
  // at least `election_rounds` election timeouts from its start, even past its own deadline:
  // an election takes one or two of them, more when votes split or the machine is loaded.
  std::chrono::milliseconds election_timeout{1000};
  int election_rounds = 15;

  // Parses "etcd://h1:2379,h2:2379[/prefix]" (`tls` with "etcds://"): endpoints and prefix,
  // the rest left at its defaults. Throws ConfigError naming the address for a malformed one.
  static EtcdOptions parse(const std::string& address);

  // The launch edge: parse(address) with the credentials and TLS files of TENAX_ETCD_USER,
  // TENAX_ETCD_PASSWORD, TENAX_ETCD_CACERT, TENAX_ETCD_CERT, TENAX_ETCD_KEY and the lease TTL
  // of TENAX_ETCD_LEASE_TTL (seconds). Throws ConfigError as parse does, and for an "etcds://"
  // address without TENAX_ETCD_CACERT.
  static EtcdOptions from_environment(const std::string& address);

  // True iff `address` names an etcd cluster ("etcd://…" or "etcds://…"), not a TCP store.
  static bool is_etcd_address(const std::string& address);
};

// A client of an etcd cluster. Thread-safe: calls are serialized per client; clone() gives a
// thread its own. Each call is bounded by timeout() (a wait by its own timeout): when no member
// answers in time (the cluster lost its quorum, or every member is unreachable) it throws
// StoreError naming etcd and its endpoints.
//
// How the Store operations map onto etcd: set/get/delete are put/range/deleterange; add and
// compare_set are transactions conditioned on the key's revision or value; waits watch the keys
// (from the revision they were read at, so nothing is missed); set_on_disconnect keeps a lease
// alive from a thread of its own, and a record under the lease's owner that any other client
// turns into the key once the lease has expired (see docs/etcd.md).
class TENAX_API EtcdStore : public Store {
 public:
  // Reaches the cluster (authenticating when a user is given). Throws StoreError when no
  // member answers within `timeout` or the credentials are refused.
  static std::shared_ptr<EtcdStore> connect(const EtcdOptions& options,
                                            std::chrono::milliseconds timeout);
  ~EtcdStore() override;
  EtcdStore(const EtcdStore&) = delete;
  EtcdStore& operator=(const EtcdStore&) = delete;

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
  void set_on_disconnect(const std::string& key, const std::string& value) override;
  // The lease's TTL and one watch slice.
  std::chrono::milliseconds disconnect_notice() const override;
  std::shared_ptr<Store> clone() const override;
  void close() noexcept override;
  void interrupt() noexcept override;
  std::string describe() const override;
  std::string local_address() const override;

  const EtcdOptions& options() const { return options_; }

 private:
  explicit EtcdStore(EtcdOptions options);
  using Clock = std::chrono::steady_clock;
  std::string full(const std::string& key) const { return options_.prefix + key; }
  void check_open() const;
  // Turns the records of clients whose lease has expired into their keys; at most every
  // 100 ms unless `force`.
  void reap(bool force);
  // Reads `keys` (full names); returns the values found (empty optional where absent) and the
  // revision they were read at.
  std::vector<std::optional<std::string>> read(const std::vector<std::string>& keys,
                                               int64_t* revision, Clock::time_point deadline);
  template <typename Done>
  void wait_until(const std::vector<std::string>& keys, std::chrono::milliseconds timeout,
                  Done done);
  void keep_alive();

  EtcdOptions options_;
  std::string id_;  // this client's name in the internal keys
  mutable std::mutex mu_;
  std::unique_ptr<detail::EtcdClient> client_;
  bool closed_ = false;
  Clock::time_point last_reap_{};
  // set_on_disconnect: a lease kept alive by `keeper_` on a client of its own.
  int64_t lease_ = 0;
  std::vector<std::string> records_;
  std::unique_ptr<detail::EtcdClient> keeper_client_;
  std::thread keeper_;
  std::mutex keeper_mu_;
  std::condition_variable keeper_cv_;
  bool keeper_stop_ = false;
  std::atomic<bool> lease_lost_{false};
};

// Opens the store at `address`: "etcd://…" or "etcds://…" (EtcdOptions::from_environment), else
// "host:port" of a tenax store server presenting `token`. Throws ConfigError for a malformed
// address, StoreError when it cannot be reached within `timeout`.
TENAX_API std::shared_ptr<Store> open_store(const std::string& address, const std::string& token,
                                            std::chrono::milliseconds timeout);

}  // namespace tenax
