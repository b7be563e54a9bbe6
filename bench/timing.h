#pragma once

// Timing helpers of the benchmark programs.

#include <algorithm>
#include <chrono>
#include <vector>

namespace tenax::bench {

using Clock = std::chrono::steady_clock;

inline double seconds_since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

// The middle element (the upper one of an even count).
inline double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

}  // namespace tenax::bench
