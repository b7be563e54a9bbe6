#include "checkpoint/memory_tier.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <dirent.h>

#include "tenax/core/error.h"

namespace tenax::detail {
namespace {

constexpr char kMagic[8] = {'T', 'N', 'X', 'S', 'N', 'A', 'P', '1'};
constexpr uint64_t kPage = 4096;

uint64_t page_up(uint64_t n) { return (n + kPage - 1) & ~(kPage - 1); }

std::string errno_text() { return std::strerror(errno); }

}  // namespace

Region::Region(Region&& o) noexcept { *this = std::move(o); }

Region& Region::operator=(Region&& o) noexcept {
  if (this != &o) {
    if (base_) ::munmap(base_, size_);
    name_ = std::move(o.name_);
    base_ = o.base_;
    size_ = o.size_;
    o.base_ = nullptr;
    o.size_ = 0;
  }
  return *this;
}

Region::~Region() {
  if (base_) ::munmap(base_, size_);
}

Region Region::create(const std::string& name, uint64_t capacity) {
  int fd = ::shm_open(name.c_str(), O_RDWR | O_CREAT, 0600);
  if (fd < 0) throw CheckpointError("memory tier: shm_open(" + name + "): " + errno_text());
  // posix_fallocate reserves the pages now: a full /dev/shm fails here, not with SIGBUS later.
  if (::ftruncate(fd, 0) != 0 || ::ftruncate(fd, static_cast<off_t>(capacity)) != 0 ||
      ::posix_fallocate(fd, 0, static_cast<off_t>(capacity)) != 0) {
    const std::string why = errno_text();
    ::close(fd);
    ::shm_unlink(name.c_str());
    throw CheckpointError("memory tier: cannot reserve " + std::to_string(capacity) +
                          " bytes for " + name + " in /dev/shm: " + why);
  }
  void* p = ::mmap(nullptr, capacity, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, 0);
  ::close(fd);
  if (p == MAP_FAILED) throw CheckpointError("memory tier: mmap(" + name + "): " + errno_text());
  Region r;
  r.name_ = name;
  r.base_ = static_cast<char*>(p);
  r.size_ = capacity;
  // Touch every page so the first save copies into resident memory.
  for (uint64_t off = 0; off < capacity; off += kPage) r.base_[off] = 0;
  auto* h = r.header();
  std::memcpy(h->magic, kMagic, 8);
  h->state.store(kEmpty);
  h->version = 1;
  h->step = -1;
  h->capacity = capacity;
  return r;
}

std::optional<Region> Region::open(const std::string& name) {
  int fd = ::shm_open(name.c_str(), O_RDWR, 0600);
  if (fd < 0) return std::nullopt;
  struct stat st {};
  if (::fstat(fd, &st) != 0 || static_cast<uint64_t>(st.st_size) < kPage) {
    ::close(fd);
    return std::nullopt;
  }
  void* p = ::mmap(nullptr, st.st_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  ::close(fd);
  if (p == MAP_FAILED) return std::nullopt;
  Region r;
  r.name_ = name;
  r.base_ = static_cast<char*>(p);
  r.size_ = st.st_size;
  if (std::memcmp(r.header()->magic, kMagic, 8) != 0 || r.header()->capacity != r.size_) {
    return std::nullopt;
  }
  return r;
}

void Region::unlink(const std::string& name) { ::shm_unlink(name.c_str()); }

MemoryTier::MemoryTier(std::string run, std::string member, int slots, uint64_t budget_bytes,
                       char kind)
    : run_(std::move(run)), member_(std::move(member)), budget_(budget_bytes), kind_(kind) {
  if (slots < 1) throw ConfigError("checkpoint: memory_slots must be at least 1");
  if (member_.empty() || member_.find('/') != std::string::npos) {
    throw ConfigError("checkpoint: member name '" + member_ + "' must be non-empty without '/'");
  }
  regions_.resize(slots);
  for (int s = 0; s < slots; ++s) {
    if (auto r = Region::open(region_name(run_, member_, s, kind_))) regions_[s] = std::move(*r);
  }
}

std::string MemoryTier::region_name(const std::string& run, const std::string& member, int slot,
                                    char kind) {
  return "/tenax-" + run + "-" + member + "-" + kind + std::to_string(slot);
}

void MemoryTier::prepare(int slot, int64_t step, uint64_t data_bytes, uint64_t json_bytes) {
  const uint64_t need = kPage + page_up(data_bytes) + page_up(json_bytes);
  Region& r = regions_[slot];
  if (r.capacity() < need) {
    // Grow with headroom so small changes of the state do not reallocate every time.
    const uint64_t want = page_up(need + need / 8);
    uint64_t others = 0;
    for (int s = 0; s < slots(); ++s) {
      if (s != slot) others += regions_[s].capacity();
    }
    if (budget_ > 0 && others + want > budget_) {
      throw CheckpointError(
          "memory tier: " + member_ + " needs " + std::to_string(want) +
          " bytes for slot " + std::to_string(slot) + " (snapshot of " +
          std::to_string(data_bytes) + " bytes) but its budget of " + std::to_string(budget_) +
          " bytes has " + std::to_string(budget_ > others ? budget_ - others : 0) +
          " left; raise memory_budget_bytes or lower memory_slots");
    }
    r = Region();  // unmap before re-creating
    r = Region::create(region_name(run_, member_, slot, kind_), want);
  }
  auto* h = r.header();
  h->state.store(Region::kWriting, std::memory_order_release);
  h->step = step;
  h->data_offset = kPage;
  h->data_bytes = data_bytes;
  h->json_offset = kPage + page_up(data_bytes);
  h->json_bytes = 0;
}

void MemoryTier::commit(int slot, const std::string& json) {
  Region& r = regions_[slot];
  auto* h = r.header();
  if (h->json_offset + json.size() > r.capacity()) {
    throw CheckpointError("memory tier: layout of " + std::to_string(json.size()) +
                          " bytes does not fit in " + r.name());
  }
  std::memcpy(r.json(), json.data(), json.size());
  h->json_bytes = json.size();
  h->state.store(Region::kCommitted, std::memory_order_release);
}

std::vector<std::pair<int, int64_t>> MemoryTier::committed() const {
  std::vector<std::pair<int, int64_t>> out;
  for (int s = 0; s < static_cast<int>(regions_.size()); ++s) {
    const Region& r = regions_[s];
    if (r.capacity() == 0) continue;
    if (r.header()->state.load(std::memory_order_acquire) == Region::kCommitted) {
      out.emplace_back(s, r.header()->step);
    }
  }
  std::sort(out.begin(), out.end(), [](auto& a, auto& b) { return a.second > b.second; });
  return out;
}

void MemoryTier::remove_all(const std::string& run) {
  const std::string prefix = "tenax-" + run + "-";
  if (DIR* d = ::opendir("/dev/shm")) {
    while (dirent* e = ::readdir(d)) {
      std::string n = e->d_name;
      if (n.rfind(prefix, 0) == 0) ::shm_unlink(("/" + n).c_str());
    }
    ::closedir(d);
  }
}

}  // namespace tenax::detail
