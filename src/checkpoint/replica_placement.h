#pragma once

// Where each rank's peer replica goes (internal). Pure; every rank computes the same answer.

#include <optional>
#include <string>
#include <vector>

namespace tenax::detail {

// The shift k (0 < k < world) that sends rank r's replica to rank (r + k) % world, so that
// every rank sends one replica and receives one: the first of `preferred`, 1, 2, ... that puts
// every replica on a host other than its source's. `hosts[r]` is rank r's host. nullopt when
// no shift does (one host, or one host holding more than half of the ranks).
std::optional<int> replica_shift(const std::vector<std::string>& hosts, int preferred);

}  // namespace tenax::detail
