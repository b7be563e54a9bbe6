// Where peer replicas go: on another host than their source whenever the hosts allow it.

#include "checkpoint/replica_placement.h"

#include <gtest/gtest.h>

using tenax::detail::replica_shift;

namespace {

TEST(ReplicaPlacementTest, RanksGroupedByHostSendTheirReplicasOneHostOn) {
  EXPECT_EQ(replica_shift({"h1", "h1", "h2", "h2", "h3", "h3"}, 2), 2);
  EXPECT_EQ(replica_shift({"h1", "h1", "h2", "h2"}, 2), 2);
}

TEST(ReplicaPlacementTest, APreferredShiftThatKeepsAReplicaAtHomeIsPassedOver) {
  // Two ranks per host by the launcher, but after a shrink h2 has one rank left.
  const std::vector<std::string> hosts = {"h1", "h1", "h2", "h3", "h3"};
  const auto k = replica_shift(hosts, 2);
  ASSERT_TRUE(k.has_value());
  for (size_t r = 0; r < hosts.size(); ++r) {
    EXPECT_NE(hosts[r], hosts[(r + *k) % hosts.size()]) << "rank " << r << " shift " << *k;
  }
}

TEST(ReplicaPlacementTest, OneRankPerHostUsesTheNextRank) {
  EXPECT_EQ(replica_shift({"a", "b", "c"}, 1), 1);
}

TEST(ReplicaPlacementTest, NoShiftExistsOnOneHostOrWhenOneHostHoldsMostRanks) {
  EXPECT_EQ(replica_shift({"h1", "h1", "h1", "h1"}, 2), std::nullopt);
  EXPECT_EQ(replica_shift({"h1", "h1", "h1", "h2"}, 1), std::nullopt);
  EXPECT_EQ(replica_shift({"h1"}, 1), std::nullopt);
}

}  // namespace
