// The Store contract, on both backends: the TCP store against a real server on a loopback
// socket, and etcd against a real one-member etcd on loopback (skipped with one line where etcd
// is not installed).

#include <gtest/gtest.h>
#include <signal.h>

#include <chrono>
#include <thread>

#include "support/etcd_cluster.h"
#include "support/process.h"
#include "tenax/core/error.h"
#include "tenax/store/etcd_store.h"
#include "tenax/store/store.h"
#include "tenax/store/store_server.h"

using namespace std::chrono_literals;
using tenax::Store;
using tenax::StoreError;
using tenax::StoreServer;
using tenax::TcpStore;
using tenax::TimeoutError;
using tenax::testing::EtcdCluster;

namespace {

class StoreTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    if (GetParam() == "tcp") {
      server_ = std::make_unique<StoreServer>("127.0.0.1", 0, "secret");
      address_ = "127.0.0.1:" + std::to_string(server_->port());
    } else {
      if (!EtcdCluster::available()) GTEST_SKIP() << "etcd is not installed (etcd-server)";
      etcd_ = std::make_unique<EtcdCluster>(1);
      address_ = etcd_->address("storetest");
    }
  }
  std::shared_ptr<Store> client() { return tenax::open_store(address_, "secret", 5s); }

  std::unique_ptr<StoreServer> server_;
  std::unique_ptr<EtcdCluster> etcd_;
  std::string address_;
};

INSTANTIATE_TEST_SUITE_P(Backends, StoreTest, ::testing::Values("tcp", "etcd"),
                         [](const auto& info) { return info.param; });

TEST_P(StoreTest, SetThenGetReturnsTheValueBinarySafe) {
  auto s = client();
  std::string value("a\0b\xff", 4);
  s->set("k", value);
  EXPECT_EQ(s->get("k", 1s), value);
  EXPECT_EQ(s->try_get("k").value(), value);
  EXPECT_FALSE(s->try_get("absent").has_value());
}

TEST_P(StoreTest, GetWaitsForAKeySetLaterByAnotherClient) {
  auto a = client();
  auto b = client();
  std::thread setter([&] {
    std::this_thread::sleep_for(100ms);
    b->set("late", "v");
  });
  auto t0 = std::chrono::steady_clock::now();
  EXPECT_EQ(a->get("late", 5s), "v");
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 2s);
  setter.join();
}

TEST_P(StoreTest, GetTimesOutWithAnErrorNamingTheKey) {
  auto s = client();
  auto t0 = std::chrono::steady_clock::now();
  try {
    s->get("never", 200ms);
    FAIL() << "no timeout";
  } catch (const TimeoutError& e) {
    EXPECT_NE(std::string(e.what()).find("'never'"), std::string::npos) << e.what();
  }
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 2s);
  // The connection still works after a timeout.
  s->set("after", "1");
  EXPECT_EQ(s->get("after", 1s), "1");
}

TEST_P(StoreTest, AddIsAtomicAcrossConcurrentClients) {
  std::vector<std::thread> threads;
  for (int i = 0; i < 4; ++i) {
    threads.emplace_back([&] {
      auto s = client();
      for (int k = 0; k < 250; ++k) s->add("counter", 1);
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(client()->add("counter", 0), 1000);
}

TEST_P(StoreTest, CompareSetSwapsOnlyWhenTheValueMatches) {
  auto s = client();
  EXPECT_EQ(s->compare_set("cas", "", "first"), "first");  // absent matches ""
  EXPECT_EQ(s->compare_set("cas", "", "second"), "first");
  EXPECT_EQ(s->compare_set("cas", "first", "third"), "third");
}

TEST_P(StoreTest, DeleteAndListByPrefix) {
  auto s = client();
  s->set("job/a", "1");
  s->set("job/b", "2");
  s->set("jobx", "3");
  s->set("other", "4");
  EXPECT_EQ(s->list("job/"), (std::vector<std::string>{"job/a", "job/b"}));
  EXPECT_TRUE(s->delete_key("job/a"));
  EXPECT_FALSE(s->delete_key("job/a"));
  EXPECT_EQ(s->list("job/"), (std::vector<std::string>{"job/b"}));
}

TEST_P(StoreTest, WaitForSeveralKeysNamesTheMissingOnes) {
  auto s = client();
  s->set("w1", "x");
  try {
    s->wait({"w1", "w2"}, 200ms);
    FAIL() << "no timeout";
  } catch (const TimeoutError& e) {
    EXPECT_NE(std::string(e.what()).find("'w2'"), std::string::npos) << e.what();
    EXPECT_EQ(std::string(e.what()).find("'w1'"), std::string::npos) << e.what();
  }
  s->set("w2", "y");
  s->wait({"w1", "w2"}, 1s);
}

TEST_P(StoreTest, WaitAnyReturnsTheKeyThatAppeared) {
  auto a = client();
  auto b = client();
  std::thread setter([&] {
    std::this_thread::sleep_for(50ms);
    b->set("second", "v2");
  });
  auto [index, value] = a->wait_any({"first", "second"}, 5s);
  EXPECT_EQ(index, 1u);
  EXPECT_EQ(value, "v2");
  setter.join();
}

TEST_P(StoreTest, ClientWithAWrongTokenIsRefused) {
  if (GetParam() != "tcp") GTEST_SKIP() << "etcd refuses by credentials: EtcdStoreTest";
  try {
    TcpStore::connect("127.0.0.1", server_->port(), "wrong", 2s);
    FAIL() << "connected with a wrong token";
  } catch (const StoreError& e) {
    EXPECT_NE(std::string(e.what()).find("token"), std::string::npos) << e.what();
  }
}

TEST_P(StoreTest, ClientKilledWithoutGoodbyeHasItsRegisteredKeySet) {
  auto watcher = client();
  // A process of its own, killed as a crashed rank would be: no goodbye.
  tenax::testing::Process dying({STORE_CLIENT, address_, "gone/7", "rank 7 died"},
                                {{"TENAX_STORE_TOKEN", "secret"}, {"TENAX_ETCD_LEASE_TTL", "2"}});
  for (int i = 0; i < 200 && dying.output().find("ready") == std::string::npos; ++i) {
    std::this_thread::sleep_for(50ms);
  }
  ASSERT_NE(dying.output().find("ready"), std::string::npos) << dying.output();
  EXPECT_FALSE(watcher->try_get("gone/7").has_value());
  const auto t0 = std::chrono::steady_clock::now();
  dying.kill(SIGKILL);
  EXPECT_EQ(watcher->get("gone/7", 10s), "rank 7 died");
  // At once on the TCP store; within the lease's TTL (2 s) and a watch slice on etcd.
  EXPECT_LT(std::chrono::steady_clock::now() - t0, GetParam() == "tcp" ? 1s : 4s);
  // A key set this way is listed like any other.
  EXPECT_EQ(watcher->list("gone/"), (std::vector<std::string>{"gone/7"}));
}

TEST_P(StoreTest, CleanCloseDoesNotSetTheRegisteredKey) {
  auto watcher = client();
  {
    auto leaving = client();
    leaving->set_on_disconnect("gone/8", "rank 8 died");
    leaving->close();
  }
  std::this_thread::sleep_for(100ms);
  EXPECT_FALSE(watcher->try_get("gone/8").has_value());
}

TEST(StoreServerProcess, KilledServerIsAClearErrorNotAHang) {
  tenax::testing::Process server({TENAX_STORE_BIN, "--port", "0"}, {{"TENAX_STORE_TOKEN", "t"}});
  int port = 0;
  for (int i = 0; i < 500 && port == 0; ++i) {
    auto out = server.output();
    auto at = out.find("listening on 127.0.0.1:");
    if (at != std::string::npos) port = std::atoi(out.c_str() + at + 23);
    std::this_thread::sleep_for(10ms);
  }
  ASSERT_GT(port, 0) << server.output();
  auto s = TcpStore::connect("127.0.0.1", port, "t", 5s);
  s->set("k", "v");
  std::thread killer([&] {
    std::this_thread::sleep_for(200ms);
    server.kill(SIGKILL);
  });
  auto t0 = std::chrono::steady_clock::now();
  try {
    s->get("never", 60s);
    FAIL() << "get returned";
  } catch (const StoreError& e) {
    EXPECT_NE(std::string(e.what()).find("lost the connection"), std::string::npos) << e.what();
  }
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 5s);
  killer.join();
  EXPECT_THROW(s->set("k", "v"), StoreError);
}

}  // namespace
