// The fault-injection spec, parsed in one process.

#include <gtest/gtest.h>

#include "tenax/core/error.h"
#include "tenax/core/fault_injection.h"

namespace {

using Kind = tenax::FaultInjector::Kind;

TEST(FaultSpecTest, EachItemBecomesAFaultOfItsKindForItsRank) {
  tenax::FaultInjector f("kill@3:rank=1,hang@recovery,slow=5:rank=0,s3_fail=4", 1);
  ASSERT_EQ(f.faults().size(), 3u);  // slow is rank 0's
  EXPECT_EQ(f.faults()[0].kind, Kind::kKill);
  EXPECT_EQ(f.faults()[0].value, 3);
  EXPECT_EQ(f.faults()[1].kind, Kind::kHang);
  EXPECT_EQ(f.faults()[1].value, -1);  // at recovery
  EXPECT_EQ(f.faults()[2].kind, Kind::kS3Fail);
  EXPECT_EQ(f.s3_failures(), 4);
}

TEST(FaultSpecTest, AnotherRanksFaultsAreLeftOut) {
  tenax::FaultInjector f("kill@3:rank=1,s3_fail=2:rank=1", 0);
  EXPECT_TRUE(f.empty());
  EXPECT_EQ(f.s3_failures(), 0);
}

TEST(FaultSpecTest, AStepFaultWithAnEqualsSignOrAnUnknownKindIsAConfigErrorNamingTheItem) {
  for (const char* bad : {"kill=3", "slow@3", "explode@3", "kill@x", "kill@3:host=1", "nan",
                          "shm_full@3", "nan@recovery", "hang_backward=2", "sdc=1"}) {
    try {
      tenax::FaultInjector f(bad, 0);
      ADD_FAILURE() << bad << " was accepted";
    } catch (const tenax::ConfigError& e) {
      EXPECT_NE(std::string(e.what()).find(std::string("'") + bad + "'"), std::string::npos)
          << e.what();
    }
  }
}

TEST(FaultSpecTest, HealthFaultsAreAnsweredByTheirQueries) {
  tenax::FaultInjector f("sdc,sdc@7,nan@4,shm_full,hang_backward@9:rank=1", 0);
  EXPECT_TRUE(f.sdc_in_gemm());
  EXPECT_TRUE(f.corrupt_at(7));
  EXPECT_FALSE(f.corrupt_at(4));
  EXPECT_TRUE(f.nan_at(4));
  EXPECT_FALSE(f.nan_at(7));
  EXPECT_TRUE(f.shm_full());
  f.at_step(4);      // nan and sdc are the trainer's and the preflight's to apply: nothing fires
  f.in_backward(9);  // rank 1's
  tenax::FaultInjector none("nan@4", 0);
  EXPECT_FALSE(none.sdc_in_gemm());
  EXPECT_FALSE(none.shm_full());
}

TEST(FaultSpecTest, AnInjectorWithoutFaultsDoesNothingAtAStep) {
  tenax::FaultInjector f("", 0);
  EXPECT_TRUE(f.empty());
  f.at_step(1);
  f.at_recovery();
}

}  // namespace
