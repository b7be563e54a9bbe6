#include "elastic/member_order.h"

#include <algorithm>
#include <cctype>
#include <tuple>

namespace tenax::detail {

std::vector<std::string> group_by_host(const std::vector<std::string>& order,
                                       const std::map<std::string, std::string>& host_of,
                                       int group) {
  group = std::max(group, 1);
  std::vector<std::string> hosts;
  std::map<std::string, std::vector<std::string>> on;
  for (const auto& id : order) {
    auto it = host_of.find(id);
    const std::string host = it == host_of.end() ? "\n" + id : it->second;
    if (on.find(host) == on.end()) hosts.push_back(host);
    on[host].push_back(id);
  }
  std::vector<std::string> blocks, rest;
  for (const auto& h : hosts) {
    const auto& m = on[h];
    const size_t whole = m.size() / group * group;
    blocks.insert(blocks.end(), m.begin(), m.begin() + whole);
    rest.insert(rest.end(), m.begin() + whole, m.end());
  }
  blocks.insert(blocks.end(), rest.begin(), rest.end());
  return blocks;
}

bool natural_less(const std::string& a, const std::string& b) {
  auto split = [](const std::string& id) {
    size_t i = id.size();
    while (i > 0 && std::isdigit(static_cast<unsigned char>(id[i - 1]))) --i;
    // Leading zeros aside, a longer number is a larger one.
    size_t z = i;
    while (z + 1 < id.size() && id[z] == '0') ++z;
    return std::make_tuple(id.substr(0, i), id.size() - z, id.substr(z));
  };
  return split(a) < split(b);
}

int members_in_whole_blocks(const std::vector<std::string>& hosts, int group) {
  group = std::max(group, 1);
  const int n = static_cast<int>(hosts.size());
  // Members whose hosts are unknown (empty) count as one host.
  if (std::all_of(hosts.begin(), hosts.end(), [](const std::string& h) { return h.empty(); })) {
    return n / group * group;
  }
  int i = 0;
  while (i + group <= n && std::all_of(hosts.begin() + i, hosts.begin() + i + group,
                                       [&](const std::string& h) { return h == hosts[i]; })) {
    i += group;
  }
  return i;
}

}  // namespace tenax::detail
