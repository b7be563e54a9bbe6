#pragma once

// The rank order of a generation (internal). Pure; the member that closes a generation
// computes it.

#include <map>
#include <string>
#include <vector>

namespace tenax::detail {

// `order` regrouped by host: hosts in the order their first member appears, each host's
// members together in their order, in blocks of `group` (a tensor-parallel group never spans
// two hosts); a host's members beyond its last whole block go after every host's blocks, where
// they wait as standby. A member without a known host is a host of its own.
std::vector<std::string> group_by_host(const std::vector<std::string>& order,
                                       const std::map<std::string, std::string>& host_of,
                                       int group);

// True iff id `a` comes before `b` in natural order: "w2" before "w10" (a trailing number
// compares as a number, the rest as text). The first generation is ordered so, before it is
// grouped by host: its ranks follow the launcher's (w<rank>), spares (the highest ids) last.
bool natural_less(const std::string& a, const std::string& b);

// How many leading members of an order made by group_by_host form whole blocks of `group` on
// one host each: the active part of the generation.
int members_in_whole_blocks(const std::vector<std::string>& hosts, int group);

}  // namespace tenax::detail
