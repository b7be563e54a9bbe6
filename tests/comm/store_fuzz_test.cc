// The TCP store under hostile clients: a live tenax-store process on loopback gets huge
// announced frames, floods of connections that never authenticate, random and truncated frames
// and an authenticated client over the frame limit, all bounded in count and time, while a
// legitimate client keeps using it. The store must drop each bad client with a logged reason,
// keep serving, and keep its memory bounded.

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <fstream>
#include <random>
#include <thread>

#include "support/process.h"
#include "tenax/core/error.h"
#include "tenax/store/store.h"

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

namespace {

// A raw loopback connection with 2 s send/receive timeouts.
int raw_connect(int port) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  timeval tv{2, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    ::close(fd);
    return -1;
  }
  return fd;
}

std::string frame_header(uint32_t len) { return std::string(reinterpret_cast<char*>(&len), 4); }

std::string hello(const std::string& token) {
  std::string body(1, char(1));  // Op::kHello
  body += frame_header(static_cast<uint32_t>(token.size())) + token;
  return frame_header(static_cast<uint32_t>(body.size())) + body;
}

// True when the server has closed `fd` (EOF or reset) within 3 s.
bool closed_by_server(int fd) {
  char buf[256];
  const auto end = Clock::now() + 3s;
  while (Clock::now() < end) {
    ssize_t k = ::recv(fd, buf, sizeof(buf), 0);
    if (k == 0) return true;
    if (k < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) return true;
  }
  return false;
}

long rss_kib(pid_t pid) {
  std::ifstream status("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("VmRSS:", 0) == 0) return std::stol(line.substr(6));
  }
  return -1;
}

TEST(StoreHardeningTest, HostileClientsAreDroppedWithAReasonWhileALegitimateOneIsServed) {
  const std::string token = "fuzz-token";
  tenax::testing::Process server({TENAX_STORE_BIN, "--port", "0"},
                                 {{"TENAX_STORE_TOKEN", token},
                                  {"TENAX_STORE_HELLO_TIMEOUT_MS", "500"},
                                  {"TENAX_STORE_MAX_FRAME", std::to_string(1 << 20)}});
  int port = 0;
  for (int i = 0; i < 500 && port == 0; ++i) {
    const auto out = server.output();
    const auto at = out.find("listening on 127.0.0.1:");
    if (at != std::string::npos) port = std::atoi(out.c_str() + at + 23);
    std::this_thread::sleep_for(10ms);
  }
  ASSERT_GT(port, 0) << server.output();
  const long rss_before = rss_kib(server.pid());

  // The legitimate client: set and get 1 KiB values until the attacks are over.
  std::atomic<bool> stop{false};
  std::atomic<long> ops{0};
  std::atomic<long> slowest_ms{0};
  std::string legit_error;  // written by the client's thread before it sets legit_failed
  std::atomic<bool> legit_failed{false};
  std::thread legit([&] {
    try {
      auto s = tenax::TcpStore::connect("127.0.0.1", port, token, 5s);
      const std::string value(1024, 'v');
      for (long i = 0; !stop; ++i) {
        const auto t0 = Clock::now();
        s->set("legit/" + std::to_string(i % 100), value);
        if (s->get("legit/" + std::to_string(i % 100), 2s) != value)
          throw tenax::Error("bad value");
        const long ms =
            std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - t0).count();
        if (ms > slowest_ms) slowest_ms = ms;
        ++ops;
        std::this_thread::sleep_for(5ms);
      }
    } catch (const std::exception& e) {
      legit_error = e.what();
      legit_failed = true;
    }
  });

  // The attacks start once the legitimate client is in and served.
  for (int i = 0; i < 500 && ops == 0 && !legit_failed; ++i) std::this_thread::sleep_for(10ms);
  if (ops == 0) {
    stop = true;
    legit.join();
    FAIL() << "the legitimate client was not served before any attack: " << legit_error;
  }

  // 1. Before authenticating: announce 4 GB and stream up to 300 MiB.
  {
    int fd = raw_connect(port);
    ASSERT_GE(fd, 0);
    std::string chunk = frame_header(0xfffffff0u) + std::string(1 << 16, 'x');
    size_t sent = 0;
    const auto end = Clock::now() + 5s;
    while (sent < (size_t(300) << 20) && Clock::now() < end) {
      ssize_t k = ::send(fd, chunk.data(), chunk.size(), MSG_NOSIGNAL);
      if (k <= 0) break;
      sent += static_cast<size_t>(k);
      chunk.assign(1 << 16, 'x');
    }
    EXPECT_LT(sent, size_t(16) << 20) << "the store kept reading an unauthenticated 4 GB frame";
    ::close(fd);
  }

  // 2. 200 connections that never present the token: all closed after the hello deadline,
  // while a new client still gets in.
  {
    std::vector<int> idle;
    for (int i = 0; i < 200; ++i) {
      int fd = raw_connect(port);
      if (fd >= 0) idle.push_back(fd);
    }
    const auto t0 = Clock::now();
    auto late = tenax::TcpStore::connect("127.0.0.1", port, token, 5s);
    late->set("late", "1");
    EXPECT_LT(Clock::now() - t0, 3s);
    int closed = 0;
    for (int fd : idle) {
      closed += closed_by_server(fd) ? 1 : 0;
      ::close(fd);
    }
    EXPECT_EQ(closed, static_cast<int>(idle.size()));
  }

  // 3. Random, truncated and malformed frames, half of them after a valid hello.
  {
    std::mt19937 rng(20261130);
    for (int i = 0; i < 300; ++i) {
      int fd = raw_connect(port);
      ASSERT_GE(fd, 0);
      std::string bytes = (rng() % 2) ? hello(token) : "";
      switch (rng() % 4) {
        case 0:  // random bytes
          for (size_t n = 1 + rng() % 2000; n > 0; --n) bytes += char(rng());
          break;
        case 1:  // a frame announced longer than what follows
          bytes += frame_header(100 + rng() % 1000) + std::string(10, char(rng()));
          break;
        case 2:  // a huge announced length
          bytes += frame_header(0x80000000u + rng() % 1000) + "abc";
          break;
        default:  // a well-framed body with a random op and truncated arguments
          bytes += frame_header(3) + std::string{char(rng() % 16), char(0xff), char(0xff)};
      }
      ::send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL);
      ::close(fd);
    }
  }

  // 4. An authenticated client over the frame limit (1 MiB here).
  {
    int fd = raw_connect(port);
    ASSERT_GE(fd, 0);
    const std::string h = hello(token);
    ASSERT_EQ(::send(fd, h.data(), h.size(), MSG_NOSIGNAL), static_cast<ssize_t>(h.size()));
    char reply[16];
    ASSERT_GT(::recv(fd, reply, sizeof(reply), 0), 0);
    const std::string big = frame_header(2u << 20) + std::string(1 << 16, 'y');
    ::send(fd, big.data(), big.size(), MSG_NOSIGNAL);
    EXPECT_TRUE(closed_by_server(fd));
    ::close(fd);
  }

  std::this_thread::sleep_for(300ms);
  stop = true;
  legit.join();
  EXPECT_EQ(legit_error, "");
  EXPECT_GT(ops.load(), 10);
  EXPECT_LT(slowest_ms.load(), 2000);
  EXPECT_EQ(server.wait(0ms), -1) << "the store exited\n" << server.output();
  const long rss_after = rss_kib(server.pid());
  EXPECT_LT(rss_after - rss_before, 32 * 1024)
      << "rss " << rss_before << " -> " << rss_after << " KiB";
  const std::string log = server.output();
  EXPECT_NE(log.find("dropped client 127.0.0.1:"), std::string::npos) << log;
  EXPECT_NE(log.find("before presenting the token"), std::string::npos) << log;
  EXPECT_NE(log.find("did not present the token within 500 ms"), std::string::npos) << log;
  EXPECT_NE(log.find("(limit 1048576)"), std::string::npos) << log;
  EXPECT_EQ(log.find(token), std::string::npos) << "the token was logged\n" << log;
  server.kill(SIGTERM);
  server.wait(5s);
}

}  // namespace
