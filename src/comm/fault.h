#pragma once

// A communicator's fault record: what broke it, as stored under "<prefix>/fault" in the store
// so that every rank throws the same error. The first writer wins (compare_set). Internal.
// Encoding: "<kind>|<rank>|<peer,peer,...>|<message>".

#include <exception>
#include <optional>
#include <string>
#include <vector>

namespace tenax::detail {

struct FaultRecord {
  enum Kind { kLost, kTimeout, kAbort, kError };
  Kind kind = kError;
  int rank = -1;           // the lost / aborting rank, or the reporter
  std::vector<int> peers;  // for timeouts: the ranks that were waited on
  std::string message;

  // "rank r of communicator 'name' (pid P on host) is gone": what the store writes when this
  // process's connection drops.
  static FaultRecord gone(int rank, const std::string& comm, const std::string& host);
  // "communicator 'name' was aborted by rank r: reason".
  static FaultRecord aborted(int rank, const std::string& comm, const std::string& reason);

  std::string encode() const;
  static FaultRecord decode(const std::string& s);
  // The tenax exception this fault raises: PeerLostError, TimeoutError, AbortedError, CommError.
  std::exception_ptr to_exception() const;
};

std::string join_ranks(const std::vector<int>& ranks);

}  // namespace tenax::detail

#include <atomic>
#include <functional>
#include <memory>
#include <thread>

namespace tenax {
class Store;
}  // namespace tenax

namespace tenax::detail {

// The store side of a communicator's failure handling, shared by the backends:
//  - registers "this rank is gone" to be written by the store server if this process's
//    connection drops without a goodbye (kill -9, crash);
//  - watches "<prefix>/fault" on its own connection and calls on_fault once when it appears;
//  - publishes a fault (first writer wins) so every rank raises the same error.
class FaultChannel {
 public:
  FaultChannel(std::shared_ptr<Store> store, std::string prefix, int rank,
               const FaultRecord& gone, std::function<void(const FaultRecord&)> on_fault);
  // Calls stop().
  ~FaultChannel();

  // Publishes `f`; returns the record that won (maybe another rank's). Never throws: without a
  // store, returns `f`.
  FaultRecord publish(const FaultRecord& f);
  // The published fault, if any. Never throws.
  std::optional<FaultRecord> current();
  // Stops watching and says goodbye, so a clean exit is not taken for a death. Idempotent.
  void stop();

 private:
  void watch();

  std::shared_ptr<Store> store_, watch_store_;
  std::string fault_key_, wake_key_;
  std::function<void(const FaultRecord&)> on_fault_;
  std::atomic<bool> stopping_{false};
  std::thread watcher_;
};

}  // namespace tenax::detail
