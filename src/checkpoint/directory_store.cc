#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "checkpoint/object_store.h"
#include "tenax/core/error.h"

namespace tenax::detail {
namespace {

namespace fs = std::filesystem;

class DirectoryStore : public ObjectStore {
 public:
  explicit DirectoryStore(std::string root) : root_(std::move(root)) {}

  void put(const std::string& key, const char* data, size_t n) override {
    const fs::path path = fs::path(root_) / key;
    fs::create_directories(path.parent_path());
    // Write beside, fsync, rename: the object appears whole or not at all.
    const fs::path tmp = path.string() + ".tmp." + std::to_string(::getpid());
    // The whole 4 KiB blocks of a large, 4 KiB-aligned buffer go to the device directly
    // (O_DIRECT): no copy into the page cache and no dirty pages for the kernel's flusher
    // threads to write back beside training. The rest, and filesystems that refuse O_DIRECT,
    // go through the page cache.
    const size_t direct =
        n >= kDirectMin && reinterpret_cast<uintptr_t>(data) % kBlock == 0 ? n / kBlock * kBlock : 0;
    int fd = -1;
    if (direct > 0) fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_DIRECT, 0644);
    const bool is_direct = fd >= 0;
    if (fd < 0) fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) fail("create", tmp.string());
    size_t done = 0;
    if (is_direct) {
      done = write_all(fd, data, direct, 0);
      if (done < direct) done = done / kBlock * kBlock;  // refused part way: finish buffered
      ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) & ~O_DIRECT);
    }
    if (write_all(fd, data + done, n - done, done) != n - done) {
      ::close(fd);
      fail("write", tmp.string());
    }
    if (::fsync(fd) != 0) {
      ::close(fd);
      fail("fsync", tmp.string());
    }
    ::close(fd);
    if (::rename(tmp.c_str(), path.c_str()) != 0) fail("rename", path.string());
  }

  std::string get(const std::string& key) override {
    const fs::path path = fs::path(root_) / key;
    std::error_code ec;
    const auto size = fs::file_size(path, ec);
    if (ec) throw CheckpointError("durable tier " + describe() + ": no object " + key);
    return get_range(key, 0, static_cast<int64_t>(size));
  }

  std::string get_range(const std::string& key, int64_t offset, int64_t n) override {
    const fs::path path = fs::path(root_) / key;
    int fd = ::open(path.c_str(), O_RDONLY);
    if (fd < 0) throw CheckpointError("durable tier " + describe() + ": no object " + key);
    std::string out(static_cast<size_t>(n), '\0');
    int64_t done = 0;
    while (done < n) {
      ssize_t r = ::pread(fd, out.data() + done, n - done, offset + done);
      if (r < 0 && errno == EINTR) continue;
      if (r <= 0) break;
      done += r;
    }
    ::close(fd);
    if (done != n) {
      throw CheckpointError("durable tier " + describe() + ": object " + key + " is truncated (" +
                            std::to_string(offset + done) + " bytes, needed " +
                            std::to_string(offset + n) + ")");
    }
    return out;
  }

  std::vector<std::string> list(const std::string& prefix) override {
    std::vector<std::string> keys;
    std::error_code ec;
    if (!fs::is_directory(root_, ec)) return keys;
    for (auto it = fs::recursive_directory_iterator(root_, ec);
         !ec && it != fs::recursive_directory_iterator(); it.increment(ec)) {
      if (!it->is_regular_file()) continue;
      std::string key = fs::relative(it->path(), root_).generic_string();
      if (key.find(".tmp.") != std::string::npos) continue;
      if (key.rfind(prefix, 0) == 0) keys.push_back(key);
    }
    std::sort(keys.begin(), keys.end());
    return keys;
  }

  void remove(const std::string& key) override {
    std::error_code ec;
    fs::path path = fs::path(root_) / key;
    fs::remove(path, ec);
    // Prune directories left empty, up to the root.
    for (path = path.parent_path(); !ec && path != fs::path(root_) && fs::is_empty(path, ec);
         path = path.parent_path()) {
      fs::remove(path, ec);
    }
  }

  void check() override {
    std::error_code ec;
    fs::create_directories(root_, ec);
    if (ec || ::access(root_.c_str(), W_OK) != 0) {
      throw CheckpointError("durable tier " + describe() + ": directory is not writable");
    }
  }

  std::string describe() const override { return "dir:" + root_; }

 private:
  static constexpr size_t kBlock = 4096;         // O_DIRECT alignment of buffer, offset, length
  static constexpr size_t kDirectMin = 1 << 20;  // smaller objects go through the page cache

  // Writes `n` bytes at `offset`; returns how many were written before an error (errno set).
  // An O_DIRECT write the filesystem refuses (EINVAL) stops early; the caller finishes it.
  static size_t write_all(int fd, const char* data, size_t n, size_t offset) {
    size_t done = 0;
    while (done < n) {
      ssize_t w = ::pwrite(fd, data + done, n - done, static_cast<off_t>(offset + done));
      if (w < 0 && errno == EINTR) continue;
      if (w <= 0) break;
      done += static_cast<size_t>(w);
    }
    return done;
  }

  [[noreturn]] void fail(const char* op, const std::string& path) {
    throw CheckpointError("durable tier " + describe() + ": " + op + " " + path + ": " +
                          std::strerror(errno));
  }
  std::string root_;
};

}  // namespace

std::unique_ptr<ObjectStore> open_directory_store(const std::string& dir) {
  return std::make_unique<DirectoryStore>(dir);
}

std::unique_ptr<ObjectStore> open_object_store(const std::string& url, const S3Options& s3) {
  if (url.rfind("s3://", 0) == 0) {
    const std::string rest = url.substr(5);
    const size_t slash = rest.find('/');
    const std::string bucket = rest.substr(0, slash);
    std::string prefix = slash == std::string::npos ? "" : rest.substr(slash + 1);
    if (!prefix.empty() && prefix.back() != '/') prefix += '/';
    if (bucket.empty()) throw ConfigError("checkpoint: durable URL '" + url + "' names no bucket");
    return open_s3_store(bucket, prefix, s3);
  }
  if (url.rfind("file://", 0) == 0) return open_directory_store(url.substr(7));
  if (url.find("://") != std::string::npos) {
    throw ConfigError("checkpoint: durable URL '" + url + "': expected s3://, file:// or a path");
  }
  return open_directory_store(url);
}

}  // namespace tenax::detail
