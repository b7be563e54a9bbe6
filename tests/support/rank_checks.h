#pragma once

// What the multi-process test drivers assert about their ranks' results.

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "support/process.h"

namespace tenax::testing {

// Every rank exited 0 and printed "PASS <scenario>" (its worker's checks all held).
inline void expect_all_pass(const std::vector<RankResult>& results, const std::string& scenario) {
  for (const auto& r : results) {
    EXPECT_EQ(r.exit_code, 0) << dump(results);
    EXPECT_NE(r.output.find("PASS " + scenario), std::string::npos) << dump(results);
  }
}

}  // namespace tenax::testing
