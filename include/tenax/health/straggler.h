#pragma once

// Fail-slow detection: each step, every active rank's compute time (its step less
// the time it waited on communication and on checkpoint saves, since everyone waits for the
// slowest) against the median of the group.

#include <cstdint>
#include <deque>
#include <vector>

#include "tenax/core/export.h"

namespace tenax {

// Thread rules: not synchronized; one thread at a time (the training thread, once per step).
class TENAX_API StragglerDetector {
 public:
  StragglerDetector(double threshold, int window, int steps)
      : threshold_(threshold), window_(window < 1 ? 1 : window), steps_(steps < 1 ? 1 : steps) {}

  // One step's compute seconds per rank (0: unknown, e.g. the first step). Returns the ranks
  // whose mean score over the window (compute / the median's) stayed above the threshold for
  // `steps` steps in a row, once each time they get there.
  std::vector<int> add(const std::vector<double>& compute);
  // The mean score of `rank` over the window (1 when unknown).
  double score(int rank) const;

 private:
  const double threshold_;
  const int window_, steps_;
  std::vector<std::deque<double>> scores_;  // per rank, the last `window_` scores
  std::vector<int> over_;                   // per rank, consecutive steps above the threshold
};

}  // namespace tenax
