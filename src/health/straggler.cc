#include "tenax/health/straggler.h"

#include <algorithm>
#include <numeric>

namespace tenax {

std::vector<int> StragglerDetector::add(const std::vector<double>& compute) {
  const size_t n = compute.size();
  if (scores_.size() != n) {  // a new world: start over
    scores_.assign(n, {});
    over_.assign(n, 0);
  }
  std::vector<double> known;
  for (double c : compute) {
    if (c > 0) known.push_back(c);
  }
  std::vector<int> flagged;
  if (known.size() < 3 || n < 3) return flagged;  // no majority to compare against
  std::nth_element(known.begin(), known.begin() + known.size() / 2, known.end());
  const double median = known[known.size() / 2];
  if (median <= 0) return flagged;
  for (size_t r = 0; r < n; ++r) {
    if (compute[r] <= 0) continue;
    auto& s = scores_[r];
    s.push_back(compute[r] / median);
    if (static_cast<int>(s.size()) > window_) s.pop_front();
    if (score(static_cast<int>(r)) > threshold_ && static_cast<int>(s.size()) == window_) {
      if (++over_[r] == steps_) flagged.push_back(static_cast<int>(r));
    } else {
      over_[r] = 0;
    }
  }
  return flagged;
}

double StragglerDetector::score(int rank) const {
  if (rank < 0 || rank >= static_cast<int>(scores_.size()) || scores_[rank].empty()) return 1;
  const auto& s = scores_[rank];
  return std::accumulate(s.begin(), s.end(), 0.0) / static_cast<double>(s.size());
}

}  // namespace tenax
