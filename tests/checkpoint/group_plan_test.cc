// The plan of a restore from a group's memory, in one process: who takes which saved part from
// whom, decided from the members' offers alone.

#include <gtest/gtest.h>

#include "checkpoint/group_plan.h"

namespace {

using tenax::detail::Item;
using tenax::detail::Layout;
using tenax::detail::make_plan;
using tenax::detail::Offer;
using tenax::detail::ShardRecord;

// Rows [offset, offset + rows) of a float32 tensor "w" of 8 x 4.
ShardRecord rows(int64_t offset, int64_t n) {
  ShardRecord s;
  s.name = "w";
  s.dtype = "float32";
  s.global_shape = {8, 4};
  s.offsets = {offset, 0};
  s.sizes = {n, 4};
  s.nbytes = n * 4 * 4;
  return s;
}

Layout snapshot(const std::string& member, int64_t step, std::vector<ShardRecord> shards,
                int64_t generation = 1) {
  Layout l;
  l.run = "r";
  l.member = member;
  l.step = step;
  l.generation = generation;
  l.shards = std::move(shards);
  return l;
}

Offer offer(const std::string& member, std::vector<Layout> snapshots, std::vector<char> own,
            std::vector<ShardRecord> want) {
  Offer o;
  o.member = member;
  o.snapshots = std::move(snapshots);
  o.own = std::move(own);
  o.want.shards = std::move(want);
  return o;
}

TEST(GroupPlanTest, EachMemberTakesItsOwnPartFromItsOwnMemory) {
  std::vector<Offer> offers = {
      offer("a", {snapshot("a", 5, {rows(0, 4)})}, {1}, {rows(0, 4)}),
      offer("b", {snapshot("b", 5, {rows(4, 4)})}, {1}, {rows(4, 4)})};
  auto plan = make_plan(offers, 5, 1);
  ASSERT_TRUE(plan);
  for (int r = 0; r < 2; ++r) {
    ASSERT_EQ(plan->parts[r].size(), 1u);
    ASSERT_EQ(plan->parts[r][0].size(), 1u);
    EXPECT_EQ(plan->parts[r][0][0].holder, r);
    EXPECT_EQ(plan->extras[r].holder, r);
  }
}

TEST(GroupPlanTest, ALostMembersPartComesFromThePeerHoldingItsReplica) {
  // Three saved; "c" is gone. "a" held c's replica; the two survivors now want halves.
  std::vector<Offer> offers = {
      offer("a", {snapshot("a", 7, {rows(0, 3)}), snapshot("c", 7, {rows(6, 2)})}, {1, 0},
            {rows(0, 4)}),
      offer("b", {snapshot("b", 7, {rows(3, 3)})}, {1}, {rows(4, 4)})};
  auto plan = make_plan(offers, 7, 1);
  ASSERT_TRUE(plan);
  // b's rows 4..8 come from b's own rows 3..6 and c's rows 6..8, held by a.
  ASSERT_EQ(plan->parts[1][0].size(), 2u);
  bool from_a = false, from_b = false;
  for (const Item& it : plan->parts[1][0]) {
    from_a |= it.holder == 0 && it.snapshot == 1;
    from_b |= it.holder == 1 && it.snapshot == 0;
  }
  EXPECT_TRUE(from_a);
  EXPECT_TRUE(from_b);
}

TEST(GroupPlanTest, AStepWithAnUncoveredPartHasNoPlan) {
  std::vector<Offer> offers = {
      offer("a", {snapshot("a", 3, {rows(0, 4)})}, {1}, {rows(0, 8)})};
  EXPECT_FALSE(make_plan(offers, 3, 1));
}

TEST(GroupPlanTest, SnapshotsOfAnotherGenerationAtTheSameStepAreNeverMixedIn) {
  std::vector<Offer> offers = {
      offer("a", {snapshot("a", 4, {rows(0, 4)}, 1)}, {1}, {rows(0, 4)}),
      offer("b", {snapshot("b", 4, {rows(4, 4)}, 2)}, {1}, {rows(4, 4)})};
  EXPECT_FALSE(make_plan(offers, 4, 1));
  EXPECT_FALSE(make_plan(offers, 4, 2));
}

TEST(GroupPlanTest, ADifferentDtypeOrGlobalShapeIsNotTakenForTheWantedPart) {
  ShardRecord other = rows(0, 4);
  other.dtype = "float64";
  std::vector<Offer> offers = {offer("a", {snapshot("a", 2, {other})}, {1}, {rows(0, 4)})};
  EXPECT_FALSE(make_plan(offers, 2, 1));
}

TEST(GroupPlanTest, EveryMemberComputesTheSamePlan) {
  std::vector<Offer> offers = {
      offer("a", {snapshot("a", 9, {rows(0, 4)}), snapshot("b", 9, {rows(4, 4)})}, {1, 0},
            {rows(0, 8)}),
      offer("b", {snapshot("b", 9, {rows(4, 4)}), snapshot("a", 9, {rows(0, 4)})}, {1, 0},
            {rows(0, 8)})};
  auto one = make_plan(offers, 9, 1), two = make_plan(offers, 9, 1);
  ASSERT_TRUE(one && two);
  for (int r = 0; r < 2; ++r) {
    ASSERT_EQ(one->items[r].size(), two->items[r].size());
    for (size_t k = 0; k < one->items[r].size(); ++k) {
      EXPECT_FALSE(one->items[r][k] < two->items[r][k] || two->items[r][k] < one->items[r][k]);
    }
    // Both halves are in each member's own memory: nothing crosses the network.
    for (const Item& it : one->items[r]) EXPECT_EQ(it.holder, r);
  }
}

}  // namespace
