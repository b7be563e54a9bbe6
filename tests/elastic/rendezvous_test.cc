// Elastic rendezvous across real processes against a real store.

#include <gtest/gtest.h>

#include <regex>
#include <set>

#include "support/process.h"

using tenax::testing::dump;
using tenax::testing::RankResult;
using tenax::testing::run_ranks;

namespace {

struct Gen {
  int number = -1, rank = -1;
  std::string members;
};

// The generations a member printed, in order.
std::vector<Gen> generations(const RankResult& r) {
  std::vector<Gen> out;
  std::regex re(R"(gen (\d+) rank (\d+) members (\S+))");
  for (std::sregex_iterator it(r.output.begin(), r.output.end(), re), end; it != end; ++it) {
    out.push_back({std::stoi((*it)[1]), std::stoi((*it)[2]), (*it)[3]});
  }
  return out;
}

TEST(RendezvousTest, MembersFormOneGenerationAndAgreeOnItsOrder) {
  auto results = run_ranks(3, {RDZV_WORKER}, {{"RDZV_MIN", "3"}, {"RDZV_ACTIONS", "next"}});
  std::set<int> ranks;
  for (const auto& r : results) {
    ASSERT_EQ(r.exit_code, 0) << dump(results);
    auto g = generations(r);
    ASSERT_EQ(g.size(), 1u) << dump(results);
    EXPECT_EQ(g[0].number, 1);
    EXPECT_EQ(g[0].members, generations(results[0])[0].members) << dump(results);
    ranks.insert(g[0].rank);
  }
  EXPECT_EQ(ranks, (std::set<int>{0, 1, 2}));
}

TEST(RendezvousTest, TheLastCallWindowLetsALateJoinerIn) {
  auto results = run_ranks(3, {RDZV_WORKER},
                           {{"RDZV_MIN", "2"}, {"RDZV_LAST_CALL_MS", "2000"},
                            {"RDZV_ACTIONS", "next"}, {"RDZV_ACTIONS_2", "sleep 700 next"}});
  for (const auto& r : results) {
    ASSERT_EQ(r.exit_code, 0) << dump(results);
    auto g = generations(r);
    ASSERT_EQ(g.size(), 1u) << dump(results);
    EXPECT_EQ(g[0].members.size(), std::string("w0,w1,w2").size()) << dump(results);
  }
}

TEST(RendezvousTest, SurvivorsKeepTheirOrderAndAJoinerGoesLast) {
  // w1 leaves after generation 1 and comes back after generation 2 has formed without it.
  auto results = run_ranks(
      3, {RDZV_WORKER},
      {{"RDZV_MIN", "2"}, {"RDZV_LAST_CALL_MS", "300"},
       {"RDZV_ACTIONS", "next next until_superseded next"},
       {"RDZV_ACTIONS_0", "next next signal formed2 until_superseded next"},
       {"RDZV_ACTIONS_1", "next leave await formed2 back next"}});
  for (const auto& r : results) ASSERT_EQ(r.exit_code, 0) << dump(results);
  auto g0 = generations(results[0]), g1 = generations(results[1]), g2 = generations(results[2]);
  ASSERT_EQ(g0.size(), 3u) << dump(results);
  ASSERT_EQ(g1.size(), 2u) << dump(results);
  // Generation 2: generation 1's order without w1.
  std::string survivors = std::regex_replace(g0[0].members, std::regex("w1,|,w1"), "");
  EXPECT_EQ(g0[1].number, 2);
  EXPECT_EQ(g0[1].members, survivors) << dump(results);
  EXPECT_EQ(g2[1].members, survivors) << dump(results);
  // Generation 3: the survivors in the same order, then the joiner.
  EXPECT_EQ(g0[2].number, 3);
  EXPECT_EQ(g0[2].members, survivors + ",w1") << dump(results);
  EXPECT_EQ(g1[1].number, 3);
  EXPECT_EQ(g1[1].rank, 2) << dump(results);
  // Generation 3 was opened while the survivors were still in generation 2.
  EXPECT_NE(results[0].output.find("superseded 1"), std::string::npos) << dump(results);
}

TEST(RendezvousTest, TooFewMembersIsATimeoutSayingHowManyJoined) {
  auto results = run_ranks(1, {RDZV_WORKER},
                           {{"RDZV_MIN", "2"}, {"RDZV_JOIN_TIMEOUT_MS", "1000"},
                            {"RDZV_ACTIONS", "next"}});
  EXPECT_EQ(results[0].exit_code, 1) << dump(results);
  EXPECT_NE(results[0].output.find("generation 1 has 1 of the 2 members it needs after 1000 ms "
                                   "(joined: w0)"),
            std::string::npos)
      << dump(results);
}

TEST(RendezvousTest, AMemberWhoseHeartbeatStopsIsDeclaredDead) {
  auto results = run_ranks(2, {RDZV_WORKER},
                           {{"RDZV_MIN", "2"}, {"RDZV_HB_TIMEOUT_MS", "1500"},
                            {"RDZV_ACTIONS", "next dead"}, {"RDZV_ACTIONS_1", "next hang"}},
                           std::chrono::seconds(60), /*stuck_rank=*/1);
  EXPECT_EQ(results[0].exit_code, 0) << dump(results);
  EXPECT_NE(results[0].output.find("dead w1"), std::string::npos) << dump(results);
}

}  // namespace
