#pragma once

// Recovery events as tenax logs them, once on every member of the new generation:
// "tenax INFO elastic: recovery {json}". The leader's event (the one the generation's first
// active member logged, members[0]) stands for the re-formation; the others differ only in
// what each member restored (tier, bytes) and when it learned of the failure.

#include <nlohmann/json.hpp>

#include <algorithm>
#include <regex>
#include <string>
#include <vector>

namespace tenax::testing {

// Every event in `out` (leaders_only: one per re-formation, the leader's), ordered by
// generation (outputs are often concatenated by launch rank).
inline std::vector<nlohmann::json> recovery_events(const std::string& out,
                                                   bool leaders_only = true) {
  std::vector<nlohmann::json> evs;
  static const std::regex re("tenax INFO elastic: recovery (\\{[^\\n]*\\})");
  for (std::sregex_iterator it(out.begin(), out.end(), re), end; it != end; ++it) {
    nlohmann::json ev = nlohmann::json::parse((*it)[1].str());
    if (leaders_only && (ev["members"].empty() || ev["member"] != ev["members"][0])) continue;
    evs.push_back(std::move(ev));
  }
  std::stable_sort(evs.begin(), evs.end(), [](const nlohmann::json& a, const nlohmann::json& b) {
    return a["generation"].get<int>() < b["generation"].get<int>();
  });
  return evs;
}

}  // namespace tenax::testing
