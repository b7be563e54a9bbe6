#include "comm/shm_collectives.h"

#include <fcntl.h>
#include <linux/futex.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstring>
#include <fstream>

#include "tenax/core/config.h"
#include "tenax/store/store.h"

namespace tenax {
namespace detail {

using Clock = std::chrono::steady_clock;
using Ms = std::chrono::milliseconds;

// Per rank, each counter on a cache line of its own.
struct alignas(64) Line {
  std::atomic<uint32_t> value{0};
};
struct ShmCollectives::RankControl {
  Line arrived, reduced;
  alignas(64) int32_t pid = 0;
  // Of the operation whose first chunk used set k, checked across ranks: a rank may start its
  // next operation (on the other set) while a slower one still compares this one's.
  uint64_t count[2] = {0, 0}, signature[2] = {0, 0};
};

namespace {

constexpr Ms kSleepSlice{20};      // a waiter re-checks faults and deadlines this often
constexpr Ms kLivenessEvery{100};  // and whether the awaited processes still exist

bool reached(uint32_t value, uint32_t epoch) {
  return static_cast<int32_t>(value - epoch) >= 0;
}

void futex_wait(std::atomic<uint32_t>* word, uint32_t seen, Ms slice) {
  timespec ts{0, static_cast<long>(std::chrono::nanoseconds(slice).count())};
  syscall(SYS_futex, reinterpret_cast<uint32_t*>(word), FUTEX_WAIT, seen, &ts, nullptr, 0);
}

void futex_wake(std::atomic<uint32_t>* word) {
  syscall(SYS_futex, reinterpret_cast<uint32_t*>(word), FUTEX_WAKE, INT_MAX, nullptr, nullptr, 0);
}

std::string read_link(const char* path) {
  char buf[256];
  ssize_t n = ::readlink(path, buf, sizeof(buf));
  return n > 0 ? std::string(buf, static_cast<size_t>(n)) : std::string("?");
}

// Processes that can share a segment: same kernel boot, same pid and mount namespaces.
std::string host_identity() {
  std::string boot;
  std::ifstream("/proc/sys/kernel/random/boot_id") >> boot;
  return boot + "|" + read_link("/proc/self/ns/pid") + "|" + read_link("/proc/self/ns/mnt");
}

// Slot size: 4 MiB up to 4 ranks, then shrinking so the segment stays near 32 MiB.
size_t slot_bytes_for(int size) {
  const size_t kMax = 4 << 20, kMin = 256 << 10;
  return std::max(kMin, std::min(kMax, (size_t{16} << 20) / static_cast<size_t>(size)));
}

}  // namespace

std::unique_ptr<ShmCollectives> ShmCollectives::create(Store& store, const std::string& prefix,
                                                       int rank, int size, Ms timeout,
                                                       bool enabled) {
  if (size < 2) return nullptr;
  // The setting is part of the identity, so ranks that disagree all fall back together.
  const std::string me = host_identity() + (enabled ? "" : "|off");
  const std::string base = prefix + "/shm/";
  store.set(base + "host/" + std::to_string(rank), me);
  bool same = enabled;
  for (int j = 0; j < size; ++j) {
    if (store.get(base + "host/" + std::to_string(j), timeout) != me) same = false;
  }
  if (!same) return nullptr;

  const size_t slot = slot_bytes_for(size);
  const size_t bytes = control_bytes(size) + 2 * static_cast<size_t>(size) * slot;
  std::string name;
  int fd = -1;
  if (rank == 0) {
    static std::atomic<int> serial{0};
    name = "/tenax-shm-" + std::to_string(::getpid()) + "-" + std::to_string(serial++);
    fd = ::shm_open(name.c_str(), O_CREAT | O_EXCL | O_RDWR, 0600);
    // Reserve the pages now: on a small /dev/shm (containers) touching a page past its limit
    // would be a SIGBUS mid-operation; here it is a fall-back to sockets.
    if (fd >= 0 && (::ftruncate(fd, static_cast<off_t>(bytes)) != 0 ||
                    ::posix_fallocate(fd, 0, static_cast<off_t>(bytes)) != 0)) {
      ::close(fd);
      ::shm_unlink(name.c_str());
      fd = -1;
    }
    store.set(base + "name", fd >= 0 ? name : std::string());
  } else {
    name = store.get(base + "name", timeout);
    if (!name.empty()) fd = ::shm_open(name.c_str(), O_RDWR, 0600);
  }
  void* p = MAP_FAILED;
  if (fd >= 0) {
    p = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    ::close(fd);
  }
  // Every rank reports whether it mapped the segment; all use it only if all did.
  store.set(base + "mapped/" + std::to_string(rank), p != MAP_FAILED ? "1" : "0");
  bool all = true;
  for (int j = 0; j < size; ++j) {
    if (store.get(base + "mapped/" + std::to_string(j), timeout) != "1") all = false;
  }
  if (rank == 0 && !name.empty()) ::shm_unlink(name.c_str());  // the mappings keep it alive
  if (!all) {
    if (p != MAP_FAILED) ::munmap(p, bytes);
    return nullptr;
  }
  static_cast<RankControl*>(p)[rank].pid = static_cast<int32_t>(::getpid());
  return std::unique_ptr<ShmCollectives>(new ShmCollectives(rank, size, slot, p, bytes, timeout));
}

ShmCollectives::ShmCollectives(int rank, int size, size_t slot_bytes, void* base, size_t mapped,
                               Ms timeout)
    : rank_(rank),
      size_(size),
      slot_bytes_(slot_bytes),
      base_(base),
      mapped_(mapped),
      timeout_(timeout),
      ctl_(static_cast<RankControl*>(base)),
      data_(static_cast<char*>(base) + control_bytes(size)) {}

size_t ShmCollectives::control_bytes(int size) {
  const size_t b = sizeof(RankControl) * static_cast<size_t>(size);
  return (b + 4095) / 4096 * 4096;
}

ShmCollectives::~ShmCollectives() { ::munmap(base_, mapped_); }

char* ShmCollectives::slot(uint32_t epoch, int r) const {
  return data_ + ((epoch % 2) * static_cast<size_t>(size_) + static_cast<size_t>(r)) * slot_bytes_;
}

std::atomic<uint32_t>& ShmCollectives::counter(int rank, Counter which) const {
  RankControl& r = ctl_[rank];
  return which == Counter::kArrived ? r.arrived.value : r.reduced.value;
}

// Waits until every other rank has published `epoch` in its counter `which`.
void ShmCollectives::wait_all(Counter which, uint32_t epoch, const std::atomic<bool>& cancelled,
                              const Clock::time_point& deadline) {
  auto next_liveness = Clock::now() + kLivenessEvery;
  for (int j = 0; j < size_; ++j) {
    if (j == rank_) continue;
    std::atomic<uint32_t>* c = &counter(j, which);
    for (int spin = 0; spin < 64 && !reached(c->load(std::memory_order_acquire), epoch); ++spin) {
      __builtin_ia32_pause();
    }
    for (;;) {
      const uint32_t v = c->load(std::memory_order_acquire);
      if (reached(v, epoch)) break;
      if (cancelled.load(std::memory_order_acquire)) throw WaitFailure{WaitFailure::kCancelled, {j}};
      const auto now = Clock::now();
      if (now >= deadline) {
        std::vector<int> late;
        for (int k = 0; k < size_; ++k) {
          if (k != rank_ && !reached(counter(k, which).load(std::memory_order_acquire), epoch)) {
            late.push_back(k);
          }
        }
        throw WaitFailure{WaitFailure::kTimedOut, late};
      }
      if (now >= next_liveness) {
        const int32_t pid = ctl_[j].pid;
        if (pid > 0 && ::kill(pid, 0) != 0 && errno == ESRCH) {
          throw WaitFailure{WaitFailure::kPeerGone, {j}};
        }
        next_liveness = now + kLivenessEvery;
      }
      futex_wait(c, v, kSleepSlice);
    }
  }
}

void ShmCollectives::arrive_all(uint32_t e, bool first, size_t count, uint64_t signature,
                                const std::atomic<bool>& cancelled,
                                const Clock::time_point& deadline) {
  RankControl& mine = ctl_[rank_];
  const int set = static_cast<int>(e % 2);
  if (first) {  // compared by every rank once all have arrived at the first chunk
    mine.count[set] = count;
    mine.signature[set] = signature;
  }
  mine.arrived.value.store(e, std::memory_order_release);
  futex_wake(&mine.arrived.value);
  wait_all(Counter::kArrived, e, cancelled, deadline);
  if (!first) return;
  for (int j = 0; j < size_; ++j) {
    const RankControl& r = ctl_[j];
    if (r.count[set] != count || r.signature[set] != signature) {
      throw WaitFailure{WaitFailure::kMismatch, {j}, r.count[set], r.signature[set]};
    }
  }
}

uint32_t ShmCollectives::put_and_arrive(const void* in, size_t first, size_t m, size_t elem_size,
                                        size_t count, uint64_t signature,
                                        const std::atomic<bool>& cancelled,
                                        const Clock::time_point& deadline) {
  const uint32_t e = ++epoch_;
  std::memcpy(slot(e, rank_), static_cast<const char*>(in) + first * elem_size, m * elem_size);
  arrive_all(e, first == 0, count, signature, cancelled, deadline);
  return e;
}

void ShmCollectives::publish_reduced(uint32_t e) {
  RankControl& mine = ctl_[rank_];
  mine.reduced.value.store(e, std::memory_order_release);
  futex_wake(&mine.reduced.value);
}

void ShmCollectives::all_reduce(void* out, const void* in, size_t count, size_t elem_size,
                                ReduceFn fn, uint64_t signature,
                                const std::atomic<bool>& cancelled) {
  const size_t per_chunk = slot_bytes_ / elem_size;
  const auto deadline = Clock::now() + timeout_;
  auto* dst = static_cast<char*>(out);
  for (size_t first = 0; first < count; first += per_chunk) {
    const size_t m = std::min(per_chunk, count - first);
    // 1. Copy in and arrive.
    const uint32_t e =
        put_and_arrive(in, first, m, elem_size, count, signature, cancelled, deadline);
    // 2. Reduce this rank's slice over every slot, into its own slot and the output.
    const size_t lo = m * rank_ / size_, hi = m * (rank_ + 1) / size_;
    if (hi > lo) {
      char* acc = slot(e, rank_) + lo * elem_size;
      for (int j = 0; j < size_; ++j) {
        if (j == rank_) continue;
        fn(acc, acc, slot(e, j) + lo * elem_size, hi - lo);
      }
      std::memcpy(dst + (first + lo) * elem_size, acc, (hi - lo) * elem_size);
    }
    publish_reduced(e);
    // 3. Gather the others' slices.
    wait_all(Counter::kReduced, e, cancelled, deadline);
    for (int j = 0; j < size_; ++j) {
      if (j == rank_) continue;
      const size_t jlo = m * j / size_, jhi = m * (j + 1) / size_;
      if (jhi > jlo) {
        std::memcpy(dst + (first + jlo) * elem_size, slot(e, j) + jlo * elem_size,
                    (jhi - jlo) * elem_size);
      }
    }
  }
}

void ShmCollectives::reduce_scatter(void* out, const void* in, size_t count, size_t elem_size,
                                    ReduceFn fn, uint64_t signature,
                                    const std::atomic<bool>& cancelled) {
  const size_t per_chunk = std::max<size_t>(1, slot_bytes_ / elem_size / size_);
  const auto deadline = Clock::now() + timeout_;
  auto* dst = static_cast<char*>(out);
  auto* src = static_cast<const char*>(in);
  for (size_t first = 0; first < count; first += per_chunk) {
    const size_t m = std::min(per_chunk, count - first);
    const size_t part = m * elem_size;
    const uint32_t e = ++epoch_;
    for (int j = 0; j < size_; ++j) {
      std::memcpy(slot(e, rank_) + j * part, src + (j * count + first) * elem_size, part);
    }
    arrive_all(e, first == 0, count, signature, cancelled, deadline);
    char* acc = slot(e, rank_) + rank_ * part;
    for (int j = 0; j < size_; ++j) {
      if (j != rank_) fn(acc, acc, slot(e, j) + rank_ * part, m);
    }
    std::memcpy(dst + first * elem_size, acc, part);
    publish_reduced(e);
  }
}

void ShmCollectives::all_gather(void* out, const void* in, size_t count, size_t elem_size,
                                uint64_t signature, const std::atomic<bool>& cancelled) {
  const auto deadline = Clock::now() + timeout_;
  const size_t per_chunk = slot_bytes_ / elem_size;
  for (size_t first = 0; first < count; first += per_chunk) {
    const size_t m = std::min(per_chunk, count - first);
    const uint32_t e =
        put_and_arrive(in, first, m, elem_size, count, signature, cancelled, deadline);
    for (int j = 0; j < size_; ++j) {
      std::memcpy(static_cast<char*>(out) + (j * count + first) * elem_size, slot(e, j),
                  m * elem_size);
    }
    publish_reduced(e);
  }
}

}  // namespace detail
}  // namespace tenax
