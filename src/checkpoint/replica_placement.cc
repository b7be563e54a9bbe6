#include "checkpoint/replica_placement.h"

namespace tenax::detail {
namespace {

bool every_replica_elsewhere(const std::vector<std::string>& hosts, int k) {
  const int world = static_cast<int>(hosts.size());
  for (int r = 0; r < world; ++r) {
    if (hosts[r] == hosts[(r + k) % world]) return false;
  }
  return true;
}

}  // namespace

std::optional<int> replica_shift(const std::vector<std::string>& hosts, int preferred) {
  const int world = static_cast<int>(hosts.size());
  if (world < 2) return std::nullopt;
  if (preferred > 0 && preferred % world != 0 &&
      every_replica_elsewhere(hosts, preferred % world)) {
    return preferred % world;
  }
  for (int k = 1; k < world; ++k) {
    if (every_replica_elsewhere(hosts, k)) return k;
  }
  return std::nullopt;
}

}  // namespace tenax::detail
