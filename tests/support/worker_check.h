#pragma once

// The soft assertion of the multi-process test workers: a failed check prints what and where,
// counts, and lets the rank go on (so its peers are not left waiting in a collective). The
// worker's main exits non-zero when worker_failures() > 0.

#include <iostream>
#include <string>

namespace tenax::testing {

inline int& worker_failures() {
  static int failures = 0;
  return failures;
}

// The worker's exit: prints "PASS <scenario>" and returns 0 when no check failed, else prints
// "FAIL <scenario>" and returns 1.
inline int worker_exit(const std::string& scenario) {
  const bool ok = worker_failures() == 0;
  std::cout << (ok ? "PASS " : "FAIL ") << scenario << std::endl;
  return ok ? 0 : 1;
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
