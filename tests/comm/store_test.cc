// The TCP store against a real server on a loopback socket.

#include <gtest/gtest.h>
#include <signal.h>

#include <chrono>
#include <thread>

#include "support/process.h"
#include "tenax/comm/store.h"
#include "tenax/comm/store_server.h"
#include "tenax/core/error.h"

using namespace std::chrono_literals;
using tenax::StoreError;
using tenax::StoreServer;
using tenax::TcpStore;
using tenax::TimeoutError;

namespace {

class StoreTest : public ::testing::Test {
 protected:
  StoreServer server_{"127.0.0.1", 0, "secret"};
  std::shared_ptr<TcpStore> client() {
    return TcpStore::connect("127.0.0.1", server_.port(), "secret", 5s);
  }
};

TEST_F(StoreTest, SetThenGetReturnsTheValueBinarySafe) {
  auto s = client();
  std::string value("a\0b\xff", 4);
  s->set("k", value);
  EXPECT_EQ(s->get("k", 1s), value);
  EXPECT_EQ(s->try_get("k").value(), value);
  EXPECT_FALSE(s->try_get("absent").has_value());
}

TEST_F(StoreTest, GetWaitsForAKeySetLaterByAnotherClient) {
  auto a = client(), b = client();
  std::thread setter([&] {
    std::this_thread::sleep_for(100ms);
    b->set("late", "v");
  });
  auto t0 = std::chrono::steady_clock::now();
  EXPECT_EQ(a->get("late", 5s), "v");
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 2s);
  setter.join();
}

TEST_F(StoreTest, GetTimesOutWithAnErrorNamingTheKey) {
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

TEST_F(StoreTest, AddIsAtomicAcrossConcurrentClients) {
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

TEST_F(StoreTest, CompareSetSwapsOnlyWhenTheValueMatches) {
  auto s = client();
  EXPECT_EQ(s->compare_set("cas", "", "first"), "first");  // absent matches ""
  EXPECT_EQ(s->compare_set("cas", "", "second"), "first");
  EXPECT_EQ(s->compare_set("cas", "first", "third"), "third");
}

TEST_F(StoreTest, DeleteAndListByPrefix) {
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

TEST_F(StoreTest, WaitForSeveralKeysNamesTheMissingOnes) {
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

TEST_F(StoreTest, WaitAnyReturnsTheKeyThatAppeared) {
  auto a = client(), b = client();
  std::thread setter([&] {
    std::this_thread::sleep_for(50ms);
    b->set("second", "v2");
  });
  auto [index, value] = a->wait_any({"first", "second"}, 5s);
  EXPECT_EQ(index, 1u);
  EXPECT_EQ(value, "v2");
  setter.join();
}

TEST_F(StoreTest, ClientWithAWrongTokenIsRefused) {
  try {
    TcpStore::connect("127.0.0.1", server_.port(), "wrong", 2s);
    FAIL() << "connected with a wrong token";
  } catch (const StoreError& e) {
    EXPECT_NE(std::string(e.what()).find("token"), std::string::npos) << e.what();
  }
}

TEST_F(StoreTest, ConnectionDroppedWithoutGoodbyeSetsTheRegisteredKey) {
  auto watcher = client();
  {
    auto dying = client();
    dying->set_on_disconnect("gone/7", "rank 7 died");
    dying->interrupt();  // the socket closes with no goodbye, as when a process is killed
  }
  EXPECT_EQ(watcher->get("gone/7", 2s), "rank 7 died");
}

TEST_F(StoreTest, CleanCloseDoesNotSetTheRegisteredKey) {
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
