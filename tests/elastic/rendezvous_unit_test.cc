// The rendezvous in one process, against a real store server on loopback: the decisions and
// contracts that need no second process.

#include <gtest/gtest.h>

#include <chrono>
#include <map>
#include <memory>
#include <thread>

#include "elastic/member_order.h"
#include "tenax/core/error.h"
#include "tenax/elastic/rendezvous.h"
#include "tenax/store/store.h"
#include "tenax/store/store_server.h"

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

namespace {

// Members w0, w1 on h1 in generation 1, as `run`; their Rendezvous objects and the generation.
struct FormedPair {
  std::unique_ptr<tenax::Rendezvous> w0, w1;
  tenax::Generation gen;

  // Both go to the next generation (as at a step boundary); w0's view of it.
  tenax::Generation reform() {
    std::thread t([&] { w1->next(); });
    tenax::Generation next = w0->next();
    t.join();
    return next;
  }
};

// A member joining the next generation on a thread of its own. A test that stops early ends
// the run (the rendezvous's `done` key) so that the thread returns.
class Joiner {
 public:
  Joiner(std::shared_ptr<tenax::Store> store, const std::string& id, tenax::RendezvousOptions o)
      : store_(store), done_("rdzv/" + o.run + "/done"), rdzv_(std::move(store), id, std::move(o)) {
    thread_ = std::thread([this] { gen_ = rdzv_.next(); });
  }
  ~Joiner() {
    if (!thread_.joinable()) return;
    store_->set(done_, "1");
    thread_.join();
  }
  // The generation it joined, once formed.
  tenax::Generation wait() {
    thread_.join();
    return gen_;
  }

 private:
  std::shared_ptr<tenax::Store> store_;
  std::string done_;
  tenax::Rendezvous rdzv_;
  tenax::Generation gen_;
  std::thread thread_;
};

// Waits (bounded) until `n` ids wait for the generation after `gen`.
bool wait_for_joiners(tenax::Rendezvous& r, const tenax::Generation& gen, size_t n) {
  for (int i = 0; i < 250; ++i) {
    if (r.waiting(gen).size() >= n) return true;
    std::this_thread::sleep_for(20ms);
  }
  return false;
}

}  // namespace

class AdmissionTest : public RendezvousUnitTest {
 protected:
  tenax::RendezvousOptions host_options(const std::string& run, const std::string& host,
                                        std::chrono::milliseconds window) {
    auto o = options(run);
    o.join_timeout = 20s;
    o.host = host;
    o.host_members = 2;
    o.admission_window = window;
    return o;
  }

  FormedPair form(const std::string& run, std::chrono::milliseconds window) {
    FormedPair p;
    auto o = host_options(run, "h1", window);
    o.min_workers = 2;
    p.w0 = std::make_unique<tenax::Rendezvous>(store_, "w0", o);
    p.w1 = std::make_unique<tenax::Rendezvous>(store_, "w1", o);
    std::thread t([&] { p.w1->next(); });
    p.gen = p.w0->next();
    t.join();
    return p;
  }
};

TEST_F(AdmissionTest, AHostsJoinersAreAdmittedTogetherOnceAllOfThemHaveJoined) {
  FormedPair p = form("together", 20s);
  EXPECT_FALSE(p.w0->admit_joiners(p.gen));  // nobody waits
  Joiner w2(store_, "w2", host_options("together", "h2", 20s));
  ASSERT_TRUE(wait_for_joiners(*p.w0, p.gen, 1));
  // One of h2's two members: the others train on and wait for the second.
  EXPECT_FALSE(p.w0->admit_joiners(p.gen));
  Joiner w3(store_, "w3", host_options("together", "h2", 20s));
  ASSERT_TRUE(wait_for_joiners(*p.w0, p.gen, 2));
  EXPECT_TRUE(p.w0->admit_joiners(p.gen));
  // The members re-form with both joiners in one generation.
  const auto gen = p.reform();
  EXPECT_EQ(gen.members, (std::vector<std::string>{"w0", "w1", "w2", "w3"}));
  EXPECT_EQ(w2.wait().members, gen.members);
  EXPECT_EQ(w3.wait().members, gen.members);
}

TEST_F(AdmissionTest, ALoneJoinerOfAHostIsAdmittedOnceTheWindowHasPassed) {
  FormedPair p = form("window", 300ms);
  Joiner w2(store_, "w2", host_options("window", "h2", 300ms));
  ASSERT_TRUE(wait_for_joiners(*p.w0, p.gen, 1));
  const auto start = std::chrono::steady_clock::now();
  EXPECT_FALSE(p.w0->admit_joiners(p.gen));
  bool admitted = false;
  while (!admitted && std::chrono::steady_clock::now() - start < 5s) {
    std::this_thread::sleep_for(20ms);
    admitted = p.w0->admit_joiners(p.gen);
  }
  EXPECT_TRUE(admitted);
  EXPECT_GE(std::chrono::steady_clock::now() - start, 300ms);
  EXPECT_EQ(p.reform().members, (std::vector<std::string>{"w0", "w1", "w2"}));
  EXPECT_EQ(w2.wait().size(), 3);
}

TEST_F(AdmissionTest, AJoinerWhoseHostMatesAreActiveIsAdmittedAtOnce) {
  FormedPair p = form("restart", 20s);
  // A restarted member of h1: h1's two members are there, one active and one joining.
  Joiner w9(store_, "w9", host_options("restart", "h1", 20s));
  ASSERT_TRUE(wait_for_joiners(*p.w0, p.gen, 1));
  EXPECT_TRUE(p.w0->admit_joiners(p.gen));
  EXPECT_EQ(p.reform().members.size(), 3u);
  EXPECT_EQ(w9.wait().size(), 3);
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
