#pragma once

// The durable tier's storage: whole objects under string keys, each visible all at once or not
// at all. Two kinds: a local (or network-mounted) directory, and S3.

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "tenax/checkpoint/engine.h"

namespace tenax::detail {

class ObjectStore {
 public:
  virtual ~ObjectStore() = default;
  // Stores `n` bytes under `key`; readers see the whole object or none of it.
  virtual void put(const std::string& key, const char* data, size_t n) = 0;
  // The whole object / `n` bytes from `offset`. Throw CheckpointError naming the key when it is
  // missing or shorter than asked.
  virtual std::string get(const std::string& key) = 0;
  virtual std::string get_range(const std::string& key, int64_t offset, int64_t n) = 0;
  // Keys that start with `prefix`, sorted.
  virtual std::vector<std::string> list(const std::string& prefix) = 0;
  virtual void remove(const std::string& key) = 0;
  // Checks that the store can be used (directory writable, bucket reachable with these
  // credentials); throws CheckpointError saying what is wrong.
  virtual void check() = 0;
  virtual std::string describe() const = 0;
};

// "file:///abs/dir", "/abs/dir" or "relative/dir": a directory; "s3://bucket/prefix": S3.
std::unique_ptr<ObjectStore> open_object_store(const std::string& url, const S3Options& s3);

std::unique_ptr<ObjectStore> open_directory_store(const std::string& dir);
std::unique_ptr<ObjectStore> open_s3_store(const std::string& bucket, const std::string& prefix,
                                           const S3Options& s3);

}  // namespace tenax::detail
