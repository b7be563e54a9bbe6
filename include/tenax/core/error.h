#pragma once

// The one exception hierarchy of tenax. Every error tenax throws derives from tenax::Error, so a
// training loop can catch the whole family, or one kind (a lost peer) precisely.

#include <stdexcept>
#include <string>
#include <vector>

#include "tenax/core/export.h"

namespace tenax {

// Root of every tenax exception.
// Thread rules: an error is immutable once thrown; copies may travel to other threads.
class TENAX_API Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error(what) {}
};

// Bad user input: a flag, an argument, an environment variable, a tensor that cannot be used.
class TENAX_API ConfigError : public Error {
 public:
  explicit ConfigError(const std::string& what) : Error(what) {}
};

// A collective or point-to-point operation failed.
class TENAX_API CommError : public Error {
 public:
  explicit CommError(const std::string& what) : Error(what) {}
};

// A peer of a communicator is gone (its process died or its connections reset).
// peer() is the lost rank within the communicator, or -1 when it could not be determined.
class TENAX_API PeerLostError : public CommError {
 public:
  PeerLostError(const std::string& what, int peer) : CommError(what), peer_(peer) {}
  int peer() const noexcept { return peer_; }

 private:
  int peer_;
};

// A blocking call did not finish within its timeout. peers() lists the ranks it was still
// waiting on when known (empty otherwise).
class TENAX_API TimeoutError : public CommError {
 public:
  explicit TimeoutError(const std::string& what, std::vector<int> peers = {})
      : CommError(what), peers_(std::move(peers)) {}
  const std::vector<int>& peers() const noexcept { return peers_; }

 private:
  std::vector<int> peers_;
};

// The communicator was aborted (by abort(), or after an earlier failure) before the operation
// could complete.
class TENAX_API AbortedError : public CommError {
 public:
  explicit AbortedError(const std::string& what) : CommError(what) {}
};

// The key-value store could not be reached, refused us, or lost its connection.
class TENAX_API StoreError : public Error {
 public:
  explicit StoreError(const std::string& what) : Error(what) {}
};

// A checkpoint could not be written or read: a storage tier failed (the message names the tier
// and the object), a shard failed its checksum (the message names the shard), a manifest is
// missing, malformed or of another run, or a byte budget was exceeded.
class TENAX_API CheckpointError : public Error {
 public:
  explicit CheckpointError(const std::string& what) : Error(what) {}
};

// A rank or host failed a health check (preflight, replica comparison, a hang): the message
// names the member, the host and every reason. Such a member is kept out of the job.
class TENAX_API HealthError : public Error {
 public:
  explicit HealthError(const std::string& what) : Error(what) {}
};

}  // namespace tenax
