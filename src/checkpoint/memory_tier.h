#pragma once

// The memory tier: POSIX shared-memory regions, one per (run, member, slot), so a snapshot
// outlives the process that wrote it and a restarted process on the same host maps it again.
//
// Region layout: a 4 KiB header page, then the snapshot's data (4 KiB aligned), then its layout
// as JSON. The header's state word goes kWriting before the data is touched and kCommitted only
// after data, JSON and CRCs are in place, so a crash mid-save leaves a region that is skipped.

#include <atomic>
#include <cstdint>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

namespace tenax::detail {

struct RegionHeader {
  char magic[8];
  std::atomic<uint32_t> state;
  uint32_t version;
  int64_t step;
  uint64_t data_offset, data_bytes, json_offset, json_bytes, capacity;
};

class Region {
 public:
  static constexpr uint32_t kEmpty = 0, kWriting = 1, kCommitted = 2;

  // Creates (or re-creates with a larger size) the region `name` of `capacity` bytes and
  // touches every page once. Throws CheckpointError naming the region on failure.
  static Region create(const std::string& name, uint64_t capacity);
  // Maps an existing region read-write; nullopt when there is none or it is not a region.
  static std::optional<Region> open(const std::string& name);
  static void unlink(const std::string& name);

  Region() = default;
  Region(Region&& o) noexcept;
  Region& operator=(Region&& o) noexcept;
  ~Region();

  RegionHeader* header() const { return reinterpret_cast<RegionHeader*>(base_); }
  char* data() const { return base_ + header()->data_offset; }
  char* json() const { return base_ + header()->json_offset; }
  uint64_t capacity() const { return size_; }
  const std::string& name() const { return name_; }

 private:
  std::string name_;
  char* base_ = nullptr;
  uint64_t size_ = 0;
};

// The slots of one member of one run (a member is a rank's stable name: "r<rank>" by default,
// the rendezvous id under elastic training, so its regions stay its own when ranks renumber).
class MemoryTier {
 public:
  // Maps the member's existing regions of this kind (a restarted process finds its snapshots).
  // `budget_bytes` bounds the sum of the slot sizes (0: no bound). `kind` 's': the member's own
  // snapshots; 'p': the replicas it holds of its source's snapshots.
  MemoryTier(std::string run, std::string member, int slots, uint64_t budget_bytes,
             char kind = 's');

  static std::string region_name(const std::string& run, const std::string& member, int slot,
                                 char kind = 's');

  int slots() const { return static_cast<int>(regions_.size()); }
  Region& region(int slot) { return regions_[slot]; }

  // Makes `slot` hold at least `data_bytes` of data and `json_bytes` of layout (reallocating
  // and pre-faulting when it is too small) and marks it kWriting for `step`. Throws
  // CheckpointError, before touching memory, when the slots would exceed the budget.
  void prepare(int slot, int64_t step, uint64_t data_bytes, uint64_t json_bytes);
  // Writes the layout JSON and marks the slot committed.
  void commit(int slot, const std::string& json);

  // Committed regions of `rank` of this run on this host: (slot, step), newest first.
  std::vector<std::pair<int, int64_t>> committed() const;

  // Removes every region of `run` on this host (all members, all slots).
  static void remove_all(const std::string& run);

 private:
  std::string run_, member_;
  uint64_t budget_;
  char kind_;
  std::vector<Region> regions_;
};

}  // namespace tenax::detail
