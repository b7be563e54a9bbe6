#pragma once

// The soft assertion of the multi-process test workers: a failed check prints what and where,
// counts, and lets the rank go on (so its peers are not left waiting in a collective). The
// worker's main exits non-zero when worker_failures() > 0.

#include <iostream>

namespace tenax::testing {

inline int& worker_failures() {
  static int failures = 0;
  return failures;
}

}  // namespace tenax::testing

#undef CHECK
#define CHECK(cond, msg)                                                              \
  do {                                                                                \
    if (!(cond)) {                                                                    \
      std::cout << "CHECK FAILED (" << __LINE__ << "): " << msg << std::endl;         \
      ++tenax::testing::worker_failures();                                            \
    }                                                                                 \
  } while (0)
