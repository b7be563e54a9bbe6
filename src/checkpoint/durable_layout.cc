#include "checkpoint/durable_layout.h"

#include <algorithm>
#include <cstdio>

#include "checkpoint/crc32c.h"
#include "tenax/core/error.h"

namespace tenax::detail {

std::string step_dir(const std::string& run, int64_t step) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "step-%012lld", static_cast<long long>(step));
  return run + "/" + buf;
}

std::string rank_file(int rank) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "rank-%05d.bin", rank);
  return buf;
}

std::vector<int64_t> durable_steps(ObjectStore& store, const std::string& run) {
  const std::string head = run + "/step-", tail = "/manifest.json";
  std::vector<int64_t> steps;
  for (const auto& key : store.list(head)) {
    if (key.size() <= head.size() + tail.size() ||
        key.compare(key.size() - tail.size(), tail.size(), tail) != 0) {
      continue;
    }
    try {
      steps.push_back(std::stoll(key.substr(head.size(), key.size() - head.size() - tail.size())));
    } catch (...) {
    }
  }
  std::sort(steps.rbegin(), steps.rend());
  return steps;
}

std::string read_part(ObjectStore& store, const std::string& dir, const ShardRecord& s) {
  std::string part = store.get_range(dir + "/" + s.file, s.offset, s.nbytes);
  if (crc32c(part.data(), part.size()) != s.crc) {
    throw CheckpointError("shard '" + s.name + "' (offsets " + nlohmann::json(s.offsets).dump() +
                          ", " + s.file + ") failed its checksum");
  }
  return part;
}

}  // namespace tenax::detail
