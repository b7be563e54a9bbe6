#include "comm/fault.h"

#include <unistd.h>

#include <sstream>

#include "tenax/core/error.h"

namespace tenax::detail {

std::string join_ranks(const std::vector<int>& ranks) {
  std::string s;
  for (size_t i = 0; i < ranks.size(); ++i) {
    if (i) s += ',';
    s += std::to_string(ranks[i]);  // appended, not "," + …: GCC 12 warns falsely on that
  }
  return s;
}

FaultRecord FaultRecord::gone(int rank, const std::string& comm, const std::string& host) {
  FaultRecord f;
  f.kind = kLost;
  f.rank = rank;
  f.message = "rank " + std::to_string(rank) + " of communicator '" + comm + "' (pid " +
              std::to_string(::getpid()) + " on " + host + ") is gone: its process exited or " +
              "was killed";
  return f;
}

FaultRecord FaultRecord::aborted(int rank, const std::string& comm, const std::string& reason) {
  FaultRecord f;
  f.kind = kAbort;
  f.rank = rank;
  f.message = "communicator '" + comm + "' was aborted by rank " + std::to_string(rank) + ": " +
              reason;
  return f;
}

std::string FaultRecord::encode() const {
  return std::to_string(static_cast<int>(kind)) + "|" + std::to_string(rank) + "|" +
         join_ranks(peers) + "|" + message;
}

FaultRecord FaultRecord::decode(const std::string& s) {
  FaultRecord f;
  size_t a = s.find('|'), b = s.find('|', a + 1), c = s.find('|', b + 1);
  if (a == std::string::npos || b == std::string::npos || c == std::string::npos) {
    f.message = s;
    return f;
  }
  f.kind = static_cast<Kind>(std::stoi(s.substr(0, a)));
  f.rank = std::stoi(s.substr(a + 1, b - a - 1));
  std::stringstream peers(s.substr(b + 1, c - b - 1));
  for (std::string p; std::getline(peers, p, ',');) {
    if (!p.empty()) f.peers.push_back(std::stoi(p));
  }
  f.message = s.substr(c + 1);
  return f;
}

std::exception_ptr FaultRecord::to_exception() const {
  switch (kind) {
    case kLost: return std::make_exception_ptr(PeerLostError(message, rank));
    case kTimeout: return std::make_exception_ptr(TimeoutError(message, peers));
    case kAbort: return std::make_exception_ptr(AbortedError(message));
    case kError: break;
  }
  return std::make_exception_ptr(CommError(message));
}

}  // namespace tenax::detail

#include "tenax/core/logging.h"
#include "tenax/store/store.h"

namespace tenax::detail {

FaultChannel::FaultChannel(std::shared_ptr<Store> store, std::string prefix, int rank,
                           const FaultRecord& gone, std::function<void(const FaultRecord&)> on_fault)
    : store_(std::move(store)),
      fault_key_(prefix + "/fault"),
      wake_key_(prefix + "/wake/" + std::to_string(rank)),
      on_fault_(std::move(on_fault)) {
  watch_store_ = store_->clone();
  watch_store_->set_on_disconnect(fault_key_, gone.encode());
  watcher_ = std::thread([this] { watch(); });
}

FaultChannel::~FaultChannel() { stop(); }

void FaultChannel::stop() {
  if (stopping_.exchange(true)) return;
  try {
    store_->set(wake_key_, "1");
  } catch (const Error&) {
    watch_store_->interrupt();
  }
  watcher_.join();
  watch_store_->close();
}

void FaultChannel::watch() {
  while (!stopping_) {
    try {
      auto [index, value] =
          watch_store_->wait_any({fault_key_, wake_key_}, std::chrono::milliseconds(5000));
      if (index == 0) on_fault_(FaultRecord::decode(value));
      return;
    } catch (const TimeoutError&) {
      continue;
    } catch (const Error& e) {
      // The store is gone (its host exited); connections between ranks still report failures.
      log(LogLevel::kDebug, "fault watcher for " + fault_key_ + " stopped: " + e.what());
      return;
    }
  }
}

FaultRecord FaultChannel::publish(const FaultRecord& f) {
  try {
    return FaultRecord::decode(store_->compare_set(fault_key_, "", f.encode()));
  } catch (const Error&) {
    return f;
  }
}

std::optional<FaultRecord> FaultChannel::current() {
  try {
    if (auto v = store_->try_get(fault_key_)) return FaultRecord::decode(*v);
  } catch (const Error&) {
  }
  return std::nullopt;
}

}  // namespace tenax::detail
