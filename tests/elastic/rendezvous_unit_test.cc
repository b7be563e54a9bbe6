// The rendezvous in one process, against a real store server on loopback: the decisions and
// contracts that need no second process.

#include <gtest/gtest.h>

#include <chrono>
#include <map>
#include <memory>
#include <thread>

#include "elastic/member_order.h"
#include "tenax/comm/store.h"
#include "tenax/comm/store_server.h"
#include "tenax/core/error.h"
#include "tenax/elastic/rendezvous.h"

using namespace std::chrono_literals;

namespace {

class RendezvousUnitTest : public ::testing::Test {
 protected:
  tenax::StoreServer server_{"127.0.0.1", 0, "t"};
  std::shared_ptr<tenax::TcpStore> store_ =
      tenax::TcpStore::connect("127.0.0.1", server_.port(), "t", 5s);

  tenax::RendezvousOptions options(const std::string& run) {
    tenax::RendezvousOptions o;
    o.run = run;
    o.last_call = 0ms;
    o.join_timeout = 3s;
    return o;
  }
};

TEST_F(RendezvousUnitTest, ALoneMemberAtMinimumOneFormsTheFirstGenerationAsRankZero) {
  tenax::Rendezvous rdzv(store_, "w0", options("alone"));
  const auto gen = rdzv.next();
  EXPECT_EQ(gen.number, 1);
  EXPECT_EQ(gen.rank, 0);
  EXPECT_EQ(gen.members, std::vector<std::string>{"w0"});
  EXPECT_FALSE(rdzv.superseded(gen));
}

TEST_F(RendezvousUnitTest, AMalformedMemberListIsAStoreErrorThatNamesItsKey) {
  store_->add("rdzv/bad/current", 1);
  store_->set("rdzv/bad/g1/joined", "{not a list");
  tenax::Rendezvous rdzv(store_, "w0", options("bad"));
  try {
    rdzv.next();
    FAIL() << "a malformed record was accepted";
  } catch (const tenax::StoreError& e) {
    EXPECT_NE(std::string(e.what()).find("rdzv/bad/g1/joined"), std::string::npos) << e.what();
  }
}

TEST_F(RendezvousUnitTest, AMemberListOfTheWrongTypeIsAStoreErrorToo) {
  store_->add("rdzv/typed/current", 1);
  store_->set("rdzv/typed/g1/final", "[1, 2]");
  tenax::Rendezvous rdzv(store_, "w0", options("typed"));
  EXPECT_THROW(rdzv.next(), tenax::StoreError);
}

TEST_F(RendezvousUnitTest, DestroyingARendezvousDoesNotWaitOutAHeartbeatInterval) {
  auto o = options("quick");
  o.heartbeat_interval = 20s;
  o.heartbeat_timeout = 60s;
  const auto start = std::chrono::steady_clock::now();
  { tenax::Rendezvous rdzv(store_, "w0", o); }
  EXPECT_LT(std::chrono::steady_clock::now() - start, 2s);
  EXPECT_TRUE(store_->try_get("rdzv/quick/gone/w0").has_value());
}

TEST_F(RendezvousUnitTest, HeartbeatsAdvanceEveryInterval) {
  auto o = options("beat");
  o.heartbeat_interval = 20ms;
  tenax::Rendezvous rdzv(store_, "w0", o);
  const int64_t first = store_->add("rdzv/beat/hb/w0", 0);
  std::this_thread::sleep_for(300ms);
  EXPECT_GT(store_->add("rdzv/beat/hb/w0", 0), first);
}

TEST_F(RendezvousUnitTest, TooFewMembersWithinTheJoinTimeoutIsATimeoutErrorSayingWhoJoined) {
  auto o = options("few");
  o.min_workers = 2;
  o.join_timeout = 200ms;
  tenax::Rendezvous rdzv(store_, "w0", o);
  try {
    rdzv.next();
    FAIL() << "formed with one of two members";
  } catch (const tenax::TimeoutError& e) {
    EXPECT_NE(std::string(e.what()).find("1 of the 2"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("w0"), std::string::npos) << e.what();
  }
}

TEST_F(RendezvousUnitTest, AMemberArrivingAfterTheJobEndedIsToldSoInsteadOfWaitingOutTheTimeout) {
  tenax::Rendezvous first(store_, "w0", options("ended"));
  first.next();
  first.finish();
  auto o = options("ended");
  o.min_workers = 2;
  o.join_timeout = 20s;
  tenax::Rendezvous late(store_, "w1", o);
  const auto start = std::chrono::steady_clock::now();
  const auto gen = late.next();
  EXPECT_LT(std::chrono::steady_clock::now() - start, 5s);
  EXPECT_TRUE(gen.members.empty());
  EXPECT_EQ(gen.rank, -1);
  EXPECT_TRUE(late.finished());
}

}  // namespace

TEST_F(RendezvousUnitTest, AGenerationKeepsEachHostsMembersTogetherWhateverTheArrivalOrder) {
  // Arrivals alternate between two hosts; tensor-parallel groups of 2 must not span them.
  const std::vector<std::pair<std::string, std::string>> arrivals = {
      {"w0", "h1"}, {"w2", "h2"}, {"w1", "h1"}, {"w3", "h2"}};
  std::vector<std::unique_ptr<tenax::Rendezvous>> members;
  for (const auto& [id, host] : arrivals) {
    auto o = options("hosts");
    o.min_workers = o.max_workers = 4;
    o.host = host;
    o.group = 2;
    members.push_back(std::make_unique<tenax::Rendezvous>(store_, id, o));
  }
  std::vector<tenax::Generation> gens(members.size());
  std::vector<std::thread> threads;
  for (size_t i = 0; i < members.size(); ++i) {
    threads.emplace_back([&, i] { gens[i] = members[i]->next(); });
    std::this_thread::sleep_for(20ms);  // arrive in the order above
  }
  for (auto& t : threads) t.join();
  for (const auto& g : gens) {
    EXPECT_EQ(g.members, (std::vector<std::string>{"w0", "w1", "w2", "w3"}));
    EXPECT_EQ(g.hosts, (std::vector<std::string>{"h1", "h1", "h2", "h2"}));
  }
}

TEST(MemberOrderTest, AHostsMembersBeyondItsLastWholeGroupWaitAtTheEnd) {
  using tenax::detail::group_by_host;
  const std::map<std::string, std::string> host_of = {
      {"a", "h1"}, {"b", "h1"}, {"c", "h1"}, {"d", "h2"}, {"e", "h3"}, {"f", "h3"}};
  const auto order = group_by_host({"a", "d", "b", "e", "c", "f"}, host_of, 2);
  EXPECT_EQ(order, (std::vector<std::string>{"a", "b", "e", "f", "c", "d"}));
  std::vector<std::string> hosts;
  for (const auto& m : order) hosts.push_back(host_of.at(m));
  // c (h1) and d (h2) would make a group across two hosts: they wait as standby.
  EXPECT_EQ(tenax::detail::members_in_whole_blocks(hosts, 2), 4);
}

TEST(MemberOrderTest, WithOneHostOrNoneKnownTheOrderIsKeptAndWholeGroupsCount) {
  using tenax::detail::group_by_host;
  EXPECT_EQ(group_by_host({"c", "a", "b"}, {}, 2), (std::vector<std::string>{"c", "a", "b"}));
  EXPECT_EQ(tenax::detail::members_in_whole_blocks({"", "", ""}, 2), 2);
  EXPECT_EQ(tenax::detail::members_in_whole_blocks({"h", "h", "h", "h", "h"}, 2), 4);
}

TEST(MemberOrderTest, IdsCompareByTheirTrailingNumber) {
  using tenax::detail::natural_less;
  EXPECT_TRUE(natural_less("w2", "w10"));
  EXPECT_FALSE(natural_less("w10", "w2"));
  EXPECT_TRUE(natural_less("a9", "b1"));
  EXPECT_TRUE(natural_less("w", "w0"));
  EXPECT_FALSE(natural_less("w3", "w3"));
}
