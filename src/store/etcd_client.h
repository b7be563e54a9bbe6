#pragma once

// The HTTP side of EtcdStore: JSON requests to etcd's v3 gateway over libcurl, failing over
// between members, authenticating, and streaming watches. One client is one curl handle (one
// kept-alive connection); not thread-safe except interrupt().

#include <atomic>
#include <chrono>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "tenax/store/etcd_store.h"

namespace tenax::detail {

std::string base64_encode(const std::string& bytes);
std::string base64_decode(const std::string& text);

// An etcd integer field (the gateway writes int64 as a JSON string; absent means 0).
int64_t etcd_int(const nlohmann::json& object, const char* field);

class EtcdClient {
 public:
  using Clock = std::chrono::steady_clock;
  explicit EtcdClient(const EtcdOptions& options);
  ~EtcdClient();
  EtcdClient(const EtcdClient&) = delete;
  EtcdClient& operator=(const EtcdClient&) = delete;

  // POSTs `body` to `path` ("/v3/kv/range"…) and returns the parsed reply. A member that
  // cannot be reached, has no leader or times out is left for the next one, round after round,
  // until `deadline`, or, while a majority of the members accept connections (an election in
  // progress), until election_timeout x election_rounds from the call's start if that is later;
  // then StoreError with the last member's error, saying "quorum" only when fewer than a
  // majority were up. A request the cluster refuses (bad credentials, permission) is a
  // StoreError at once.
  nlohmann::json post(const std::string& path, const nlohmann::json& body,
                      Clock::time_point deadline);

  // Opens a watch stream with `requests` (WatchRequest objects, sent one after another) and
  // returns true as soon as it delivers an event, false when `until` passes first or the
  // member fails (the caller reads again and calls back). Throws StoreError if interrupted.
  bool watch(const std::vector<nlohmann::json>& requests, Clock::time_point until);

  // Makes the call in progress and every later one throw StoreError. Thread-safe.
  void interrupt() noexcept { interrupted_ = true; }
  bool interrupted() const { return interrupted_; }

  // "etcd at h1:2379,h2:2379" (no credentials).
  std::string describe() const;
  // The local IPv4 address of the last connection made ("" before one).
  std::string local_address() const { return local_address_; }

  struct Reply;  // one HTTP exchange (public for curl's callbacks)

 private:
  Reply perform(const std::string& url, const std::string& body, long timeout_ms, bool stream);
  void authenticate(Clock::time_point deadline);
  std::string url(size_t member, const std::string& path) const;

  EtcdOptions options_;
  void* curl_ = nullptr;  // CURL*
  size_t member_ = 0;     // the member tried first
  std::string auth_token_;
  std::atomic<bool> interrupted_{false};
  std::string local_address_;
};

}  // namespace tenax::detail
