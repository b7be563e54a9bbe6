#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <thread>

#include "store/net.h"
#include "store/store_protocol.h"
#include "tenax/core/error.h"
#include "tenax/core/wait_clock.h"
#include "tenax/store/store.h"

namespace tenax {

using detail::store_wire::Decoder;
using detail::store_wire::Encoder;
using detail::store_wire::Op;
using detail::store_wire::Status;

namespace {
// Slack on top of a server-side wait, so the client never gives up before the server answers.
constexpr std::chrono::milliseconds kReplySlack{5000};
}  // namespace

std::shared_ptr<TcpStore> TcpStore::connect(const std::string& host, int port,
                                            const std::string& token,
                                            std::chrono::milliseconds timeout) {
  const auto deadline = detail::net::deadline_after(timeout);
  std::shared_ptr<TcpStore> store;
  std::string reply;
  for (;;) {
    int fd = detail::net::connect_tcp(host, port, deadline);
    store.reset(new TcpStore(host, port, token, fd));
    store->set_timeout(timeout);
    try {
      reply = store->call(Encoder().u8(uint8_t(Op::kHello)).str(token).bytes(),
                          std::chrono::milliseconds(0));
      break;
    } catch (const StoreError&) {
      // Dropped before the hello was answered (a server pushing out the oldest of a flood of
      // unauthenticated connections): connect again while time is left.
      if (std::chrono::steady_clock::now() >= deadline) throw;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  }
  Decoder d(reply);
  if (static_cast<Status>(d.u8()) != Status::kOk) {
    std::string msg = d.str();
    store->close();
    throw StoreError("store at " + host + ":" + std::to_string(port) + " refused us: " + msg);
  }
  return store;
}

TcpStore::TcpStore(std::string host, int port, std::string token, int fd)
    : host_(std::move(host)), port_(port), token_(std::move(token)), fd_(fd) {
  sockaddr_in addr{};
  socklen_t len = sizeof(addr);
  char buf[INET_ADDRSTRLEN] = {0};
  if (::getsockname(fd_, reinterpret_cast<sockaddr*>(&addr), &len) == 0 &&
      addr.sin_family == AF_INET && ::inet_ntop(AF_INET, &addr.sin_addr, buf, sizeof(buf))) {
    local_address_ = buf;
  }
}

TcpStore::~TcpStore() { close(); }

std::string TcpStore::address() const { return host_ + ":" + std::to_string(port_); }


std::string TcpStore::call(const std::string& request, std::chrono::milliseconds wait_budget) {
  WaitMark waiting;  // on the store (and whatever it waits for), not on this thread's work
  std::lock_guard<std::mutex> lock(mu_);
  if (closed_) throw StoreError("store client for " + address() + " is closed");
  const std::string what = "store at " + address();
  // A call the server answers at once is bounded by timeout(); one it may hold (a wait) by
  // the wait plus timeout() plus slack.
  auto deadline = detail::net::deadline_after(
      wait_budget.count() > 0 ? timeout_ + wait_budget + kReplySlack : timeout_);
  std::string reply;
  if (!detail::net::send_frame(fd_, request, deadline, what) ||
      !detail::net::recv_frame(fd_, &reply, deadline, what)) {
    throw StoreError("lost the connection to the store at " + address() +
                     " (the process hosting it died or closed it)");
  }
  if (reply.empty()) throw StoreError("empty reply from the store at " + address());
  return reply;
}

void TcpStore::set(const std::string& key, const std::string& value) {
  call(Encoder().u8(uint8_t(Op::kSet)).str(key).str(value).bytes(), {});
}

std::string TcpStore::get(const std::string& key, std::chrono::milliseconds timeout) {
  Decoder d(call(Encoder().u8(uint8_t(Op::kGet)).str(key).i64(timeout.count()).bytes(), timeout));
  auto status = static_cast<Status>(d.u8());
  if (status == Status::kOk) return d.str();
  throw TimeoutError("store key '" + key + "' was not set within " +
                     std::to_string(timeout.count()) + " ms (store at " + address() + ")");
}

std::optional<std::string> TcpStore::try_get(const std::string& key) {
  Decoder d(call(Encoder().u8(uint8_t(Op::kGet)).str(key).i64(0).bytes(), {}));
  if (static_cast<Status>(d.u8()) == Status::kOk) return d.str();
  return std::nullopt;
}

int64_t TcpStore::add(const std::string& key, int64_t delta) {
  Decoder d(call(Encoder().u8(uint8_t(Op::kAdd)).str(key).i64(delta).bytes(), {}));
  if (static_cast<Status>(d.u8()) != Status::kOk) {
    throw StoreError("add on key '" + key + "': " + d.str());
  }
  return d.i64();
}

std::string TcpStore::compare_set(const std::string& key, const std::string& expected,
                                  const std::string& desired) {
  Decoder d(call(
      Encoder().u8(uint8_t(Op::kCompareSet)).str(key).str(expected).str(desired).bytes(), {}));
  d.u8();
  return d.str();
}

bool TcpStore::delete_key(const std::string& key) {
  Decoder d(call(Encoder().u8(uint8_t(Op::kDelete)).str(key).bytes(), {}));
  d.u8();
  return d.i64() != 0;
}

std::vector<std::string> TcpStore::list(const std::string& prefix) {
  Decoder d(call(Encoder().u8(uint8_t(Op::kList)).str(prefix).bytes(), {}));
  d.u8();
  std::vector<std::string> keys(static_cast<size_t>(d.i64()));
  for (auto& k : keys) k = d.str();
  return keys;
}

void TcpStore::wait(const std::vector<std::string>& keys, std::chrono::milliseconds timeout) {
  Encoder e;
  e.u8(uint8_t(Op::kWait)).i64(static_cast<int64_t>(keys.size()));
  for (const auto& k : keys) e.str(k);
  e.i64(timeout.count());
  Decoder d(call(e.bytes(), timeout));
  if (static_cast<Status>(d.u8()) == Status::kOk) return;
  int64_t n = d.i64();
  std::string missing;
  for (int64_t i = 0; i < n; ++i) missing += (i ? ", '" : "'") + d.str() + "'";
  throw TimeoutError("store keys " + missing + " were not set within " +
                     std::to_string(timeout.count()) + " ms (store at " + address() + ")");
}

std::pair<size_t, std::string> TcpStore::wait_any(const std::vector<std::string>& keys,
                                                  std::chrono::milliseconds timeout) {
  Encoder e;
  e.u8(uint8_t(Op::kWaitAny)).i64(static_cast<int64_t>(keys.size()));
  for (const auto& k : keys) e.str(k);
  e.i64(timeout.count());
  Decoder d(call(e.bytes(), timeout));
  if (static_cast<Status>(d.u8()) == Status::kOk) {
    auto index = static_cast<size_t>(d.i64());
    return {index, d.str()};
  }
  std::string names;
  for (const auto& k : keys) names += (names.empty() ? "'" : ", '") + k + "'";
  throw TimeoutError("none of the store keys " + names + " was set within " +
                     std::to_string(timeout.count()) + " ms (store at " + address() + ")");
}

void TcpStore::set_on_disconnect(const std::string& key, const std::string& value) {
  call(Encoder().u8(uint8_t(Op::kOnDisconnect)).str(key).str(value).bytes(), {});
}

std::shared_ptr<Store> TcpStore::clone() const {
  return connect(host_, port_, token_, timeout_);
}

std::string TcpStore::describe() const { return "store at " + address(); }

void TcpStore::interrupt() noexcept { ::shutdown(fd_, SHUT_RDWR); }

void TcpStore::close() noexcept {
  std::lock_guard<std::mutex> lock(mu_);
  if (closed_) return;
  closed_ = true;
  std::string reply;
  auto deadline = detail::net::deadline_after(std::chrono::milliseconds(1000));
  try {
    if (detail::net::send_frame(fd_, Encoder().u8(uint8_t(Op::kBye)).bytes(), deadline, "bye")) {
      detail::net::recv_frame(fd_, &reply, deadline, "bye");
    }
  } catch (const std::exception&) {
  }
  ::close(fd_);
}

}  // namespace tenax
