#include "tenax/store/store_server.h"

#include <cctype>
#include <cerrno>
#include <chrono>
#include <fcntl.h>
#include <list>
#include <map>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>
#include <unordered_map>
#include <utility>
#include <vector>

#include "store/net.h"
#include "store/store_protocol.h"
#include "tenax/core/error.h"
#include "tenax/core/logging.h"

namespace tenax {

using detail::store_wire::Decoder;
using detail::store_wire::Encoder;
using detail::store_wire::Op;
using detail::store_wire::Status;
using Clock = std::chrono::steady_clock;

namespace {

// Equal iff `given` is `secret`, in time that depends on the secret's length only.
bool same_secret(const std::string& given, const std::string& secret) {
  unsigned char diff = given.size() != secret.size();
  for (size_t i = 0; i < secret.size(); ++i) {
    diff |= static_cast<unsigned char>(secret[i] ^ (given.empty() ? 0 : given[i % given.size()]));
  }
  return diff == 0;
}

std::string peer_of(int fd) {
  sockaddr_storage addr{};
  socklen_t len = sizeof(addr);
  if (::getpeername(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) return "?";
  char host[INET6_ADDRSTRLEN] = {0};
  int port = 0;
  if (addr.ss_family == AF_INET) {
    auto* a = reinterpret_cast<const sockaddr_in*>(&addr);
    ::inet_ntop(AF_INET, &a->sin_addr, host, sizeof(host));
    port = ntohs(a->sin_port);
  } else if (addr.ss_family == AF_INET6) {
    auto* a = reinterpret_cast<const sockaddr_in6*>(&addr);
    ::inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof(host));
    port = ntohs(a->sin6_port);
  }
  return std::string(host) + ":" + std::to_string(port);
}

}  // namespace


// Single-threaded poll() loop. Requests that wait for keys are parked and answered when the
// keys appear or their deadline passes, so one slow waiter never blocks other clients.
class TENAX_INTERNAL StoreServer::Impl {
 public:
  Impl(int listen_fd, std::string token, StoreLimits limits)
      : listen_fd_(listen_fd), token_(std::move(token)), limits_(limits) {
    if (::pipe2(wake_, O_CLOEXEC | O_NONBLOCK) != 0) throw StoreError("pipe failed");
    thread_ = std::thread([this] { run(); });
  }

  ~Impl() { stop(); }

  int clients() const { return clients_.load(); }

  void stop() {
    if (stopping_.exchange(true)) return;
    char c = 1;
    (void)!::write(wake_[1], &c, 1);
    if (thread_.joinable()) thread_.join();
    for (auto& [fd, conn] : conns_) ::close(fd);
    conns_.clear();
    ::close(listen_fd_);
    ::close(wake_[0]);
    ::close(wake_[1]);
  }

 private:
  struct Conn {
    std::string in, out;
    Clock::time_point accepted;
    bool authed = false;
    std::list<int>::iterator pending;  // its place in pending_ while not authed
    bool said_bye = false;
    bool parked = false;
    std::vector<std::pair<std::string, std::string>> on_disconnect;
  };
  struct Parked {
    int fd;
    std::vector<std::string> keys;
    Clock::time_point deadline;
    enum Kind { kGet, kAll, kAny } kind;
  };

  void run() {
    std::vector<pollfd> fds;
    while (!stopping_) {
      fds.clear();
      fds.push_back({wake_[0], POLLIN, 0});
      fds.push_back({listen_fd_, POLLIN, 0});
      for (auto& [fd, c] : conns_) {
        short ev = POLLIN;
        if (!c.out.empty()) ev |= POLLOUT;
        fds.push_back({fd, ev, 0});
      }
      int timeout_ms = 1000;
      auto now = Clock::now();
      auto until = [&](Clock::time_point deadline) {
        auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - now).count();
        timeout_ms = static_cast<int>(std::max<long long>(0, std::min<long long>(timeout_ms, ms + 1)));
      };
      for (auto& p : parked_) until(p.deadline);
      if (!pending_.empty()) until(conns_[pending_.front()].accepted + limits_.hello_timeout);
      int rc = ::poll(fds.data(), fds.size(), timeout_ms);
      if (rc < 0 && errno != EINTR) break;
      if (stopping_) break;
      if (fds[1].revents & POLLIN) accept_all();
      for (size_t i = 2; i < fds.size(); ++i) {
        if (fds[i].revents == 0) continue;
        int fd = fds[i].fd;
        if (conns_.count(fd) == 0) continue;
        bool alive = true;
        if (fds[i].revents & (POLLIN | POLLHUP | POLLERR)) alive = read_from(fd);
        if (alive && (fds[i].revents & POLLOUT)) alive = flush(fd);
        if (!alive) drop(fd);
      }
      expire_parked();
      expire_hellos();
    }
  }

  void accept_all() {
    for (;;) {
      int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
      if (fd < 0) return;
      // Room for the newcomer: the oldest connection still to authenticate goes.
      const size_t waiting = pending_.size();
      if (waiting >= static_cast<size_t>(limits_.max_unauthenticated)) {
        refuse(pending_.front(), "was the oldest of " + std::to_string(waiting) +
                                     " connections waiting to present the token (limit " +
                                     std::to_string(limits_.max_unauthenticated) + ")");
      }
      Conn c;
      c.accepted = Clock::now();
      c.pending = pending_.insert(pending_.end(), fd);
      conns_.emplace(fd, std::move(c));
    }
  }

  // pending_ is in order of arrival: the late ones are at its front.
  void expire_hellos() {
    const auto now = Clock::now();
    while (!pending_.empty() &&
           now - conns_[pending_.front()].accepted > limits_.hello_timeout) {
      refuse(pending_.front(), "did not present the token within " +
                                   std::to_string(limits_.hello_timeout.count()) + " ms");
    }
  }

  // Why the bytes buffered from `c` break a limit ("" when they do not).
  std::string over_limit(const Conn& c) const {
    const size_t limit = c.authed ? limits_.max_frame : StoreLimits::kMaxHello;
    if (c.in.size() >= 4) {
      uint32_t len;
      std::memcpy(&len, c.in.data(), 4);
      if (len > limit) {
        return "announced a frame of " + std::to_string(len) + " bytes (limit " +
               std::to_string(limit) + (c.authed ? ")" : " before presenting the token)");
      }
    }
    // Clients wait for each answer: more than two frames' worth queued is not a client's doing.
    if (c.in.size() > 2 * (limit + 4)) {
      return "sent " + std::to_string(c.in.size()) + " bytes ahead of its answers";
    }
    if (c.out.size() > 2 * (limits_.max_frame + 4)) {
      return "left " + std::to_string(c.out.size()) + " bytes of answers unread";
    }
    return "";
  }

  // Drops `fd`, logging why: a few lines a second for each kind of reason, so that a flood of
  // bad clients costs little and every kind still shows.
  void refuse(int fd, const std::string& why) {
    std::string kind;
    for (char ch : why) {
      if (!std::isdigit(static_cast<unsigned char>(ch))) kind += ch;
    }
    const auto now = Clock::now();
    LogWindow& w = log_windows_[kind];
    if (now - w.start > std::chrono::seconds(1)) {
      if (w.muted > 0) {
        log(LogLevel::kWarning, "store: dropped " + std::to_string(w.muted) +
                                    " more clients that " + why);
      }
      w = LogWindow{now, 0, 0};
    }
    if (w.logged < 3) {
      ++w.logged;
      log(LogLevel::kWarning, "store: dropped client " + peer_of(fd) + ": it " + why);
    } else {
      ++w.muted;
    }
    conns_[fd].on_disconnect.clear();  // a refused client registered nothing that counts
    drop(fd);
  }

  bool read_from(int fd) {
    Conn& c = conns_[fd];
    char buf[65536];
    for (;;) {
      ssize_t k = ::recv(fd, buf, sizeof(buf), 0);
      if (k > 0) {
        c.in.append(buf, static_cast<size_t>(k));
        const std::string why = over_limit(c);
        if (!why.empty()) {
          refuse(fd, why);
          return false;  // dropped already; dropping again does nothing
        }
        continue;
      }
      if (k < 0 && errno == EINTR) continue;
      if (k < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
      // EOF or error: answer what was sent before it, then drop the connection.
      read_pending(fd);
      return false;
    }
    return read_pending(fd);
  }

  void reply(Conn& c, const std::string& body) {
    uint32_t len = static_cast<uint32_t>(body.size());
    c.out.append(reinterpret_cast<const char*>(&len), 4);
    c.out += body;
  }

  bool flush(int fd) {
    Conn& c = conns_[fd];
    while (!c.out.empty()) {
      ssize_t k = ::send(fd, c.out.data(), c.out.size(), MSG_NOSIGNAL);
      if (k > 0) {
        c.out.erase(0, static_cast<size_t>(k));
        continue;
      }
      if (k < 0 && errno == EINTR) continue;
      if (k < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return true;
      return false;
    }
    return !c.said_bye;
  }

  // Returns false when the connection must be dropped.
  bool handle(int fd, Conn& c, const std::string& body) {
    Decoder d(body);
    auto op = static_cast<Op>(d.u8());
    if (!c.authed) {
      if (op != Op::kHello) {
        refuse_reason_ = "sent a request before presenting the token";
        return false;
      }
      if (!same_secret(d.str(), token_)) {
        reply(c, Encoder().u8(uint8_t(Status::kError)).str("wrong store token").bytes());
        flush(fd);
        refuse_reason_ = "presented a wrong token";
        return false;
      }
      c.authed = true;
      pending_.erase(c.pending);
      clients_.fetch_add(1);
      reply(c, Encoder().u8(uint8_t(Status::kOk)).bytes());
      return true;
    }
    switch (op) {
      case Op::kHello:
        reply(c, Encoder().u8(uint8_t(Status::kOk)).bytes());
        break;
      case Op::kSet: {
        std::string key = d.str();
        put(key, d.str());
        reply(c, Encoder().u8(uint8_t(Status::kOk)).bytes());
        break;
      }
      case Op::kGet: {
        std::string key = d.str();
        int64_t wait_ms = d.i64();
        auto it = data_.find(key);
        if (it != data_.end()) {
          reply(c, Encoder().u8(uint8_t(Status::kOk)).str(it->second).bytes());
        } else if (wait_ms <= 0) {
          reply(c, Encoder().u8(uint8_t(Status::kAbsent)).bytes());
        } else {
          park(fd, c, {key}, wait_ms, Parked::kGet);
        }
        break;
      }
      case Op::kAdd: {
        std::string key = d.str();
        int64_t delta = d.i64();
        int64_t v = 0;
        auto it = data_.find(key);
        if (it != data_.end()) {
          try {
            v = std::stoll(it->second);
          } catch (const std::exception&) {
            reply(c, Encoder().u8(uint8_t(Status::kError)).str("value is not an integer").bytes());
            break;
          }
        }
        v += delta;
        put(key, std::to_string(v));
        reply(c, Encoder().u8(uint8_t(Status::kOk)).i64(v).bytes());
        break;
      }
      case Op::kCompareSet: {
        std::string key = d.str(), expected = d.str(), desired = d.str();
        auto it = data_.find(key);
        bool match = (it == data_.end()) ? expected.empty() : it->second == expected;
        if (match) put(key, desired);
        reply(c, Encoder().u8(uint8_t(Status::kOk)).str(data_.count(key) ? data_[key] : "").bytes());
        break;
      }
      case Op::kDelete: {
        bool existed = data_.erase(d.str()) > 0;
        reply(c, Encoder().u8(uint8_t(Status::kOk)).i64(existed).bytes());
        break;
      }
      case Op::kList: {
        std::string prefix = d.str();
        std::vector<const std::string*> keys;
        for (auto it = data_.lower_bound(prefix);
             it != data_.end() && it->first.compare(0, prefix.size(), prefix) == 0; ++it) {
          keys.push_back(&it->first);
        }
        Encoder e;
        e.u8(uint8_t(Status::kOk)).i64(static_cast<int64_t>(keys.size()));
        for (auto* k : keys) e.str(*k);
        reply(c, e.bytes());
        break;
      }
      case Op::kWait:
      case Op::kWaitAny: {
        std::vector<std::string> keys(static_cast<size_t>(d.i64()));
        for (auto& k : keys) k = d.str();
        int64_t wait_ms = d.i64();
        park(fd, c, std::move(keys), wait_ms, op == Op::kWait ? Parked::kAll : Parked::kAny);
        break;
      }
      case Op::kOnDisconnect: {
        std::string key = d.str();
        c.on_disconnect.emplace_back(key, d.str());
        reply(c, Encoder().u8(uint8_t(Status::kOk)).bytes());
        break;
      }
      case Op::kBye:
        c.on_disconnect.clear();
        reply(c, Encoder().u8(uint8_t(Status::kOk)).bytes());
        flush(fd);
        c.said_bye = true;
        return false;
      default:
        return false;
    }
    return true;
  }

  void park(int fd, Conn& c, std::vector<std::string> keys, int64_t wait_ms, Parked::Kind kind) {
    Parked p{fd, std::move(keys), Clock::now() + std::chrono::milliseconds(wait_ms), kind};
    if (!try_answer(p)) {
      c.parked = true;
      parked_.push_back(std::move(p));
    }
  }

  // Answers `p` if its keys are present (all of them, or one for kAny). Returns true iff
  // answered.
  bool try_answer(const Parked& p) {
    Conn& c = conns_[p.fd];
    if (p.kind == Parked::kAny) {
      for (size_t i = 0; i < p.keys.size(); ++i) {
        auto it = data_.find(p.keys[i]);
        if (it == data_.end()) continue;
        reply(c, Encoder().u8(uint8_t(Status::kOk)).i64(int64_t(i)).str(it->second).bytes());
        return true;
      }
      return false;
    }
    for (const auto& k : p.keys) {
      if (data_.count(k) == 0) return false;
    }
    if (p.kind == Parked::kGet) {
      reply(c, Encoder().u8(uint8_t(Status::kOk)).str(data_[p.keys[0]]).bytes());
    } else {
      reply(c, Encoder().u8(uint8_t(Status::kOk)).bytes());
    }
    return true;
  }

  void put(const std::string& key, std::string value) {
    data_[key] = std::move(value);
    std::vector<int> woken;
    for (auto it = parked_.begin(); it != parked_.end();) {
      bool relevant = false;
      for (const auto& k : it->keys) relevant |= (k == key);
      if (relevant && try_answer(*it)) {
        woken.push_back(it->fd);
        it = parked_.erase(it);
      } else {
        ++it;
      }
    }
    resume(woken);
  }

  void expire_parked() {
    auto now = Clock::now();
    std::vector<int> woken;
    for (auto it = parked_.begin(); it != parked_.end();) {
      if (it->deadline > now) {
        ++it;
        continue;
      }
      Conn& c = conns_[it->fd];
      Encoder e;
      e.u8(uint8_t(Status::kTimeout));
      if (it->kind == Parked::kAll) {
        std::vector<std::string> missing;
        for (const auto& k : it->keys) {
          if (data_.count(k) == 0) missing.push_back(k);
        }
        e.i64(static_cast<int64_t>(missing.size()));
        for (const auto& k : missing) e.str(k);
      }
      reply(c, e.bytes());
      woken.push_back(it->fd);
      it = parked_.erase(it);
    }
    resume(woken);
  }

  // Un-parks connections and processes requests that queued behind the parked one.
  void resume(const std::vector<int>& fds) {
    for (int fd : fds) {
      auto it = conns_.find(fd);
      if (it == conns_.end()) continue;
      it->second.parked = false;
      if (!read_pending(fd)) drop(fd);
    }
  }

  // Handles the complete requests buffered on fd. Requests on one connection are answered in
  // order, so this stops at a parked one. Returns false when fd must be dropped.
  bool read_pending(int fd) {
    Conn& c = conns_[fd];
    while (!c.parked && c.in.size() >= 4) {
      uint32_t len;
      std::memcpy(&len, c.in.data(), 4);
      if (c.in.size() < 4 + len) break;
      std::string body = c.in.substr(4, len);
      c.in.erase(0, 4 + len);
      try {
        if (!handle(fd, c, body)) {
          if (!refuse_reason_.empty()) refuse(fd, std::exchange(refuse_reason_, std::string()));
          return false;
        }
      } catch (const StoreError&) {
        refuse(fd, "sent a malformed request");
        return false;
      }
    }
    return flush(fd);
  }

  void drop(int fd) {
    auto it = conns_.find(fd);
    if (it == conns_.end()) return;
    auto on_disc = std::move(it->second.on_disconnect);
    parked_.remove_if([fd](const Parked& p) { return p.fd == fd; });
    if (it->second.authed) {
      clients_.fetch_sub(1);
    } else {
      pending_.erase(it->second.pending);
    }
    ::close(fd);
    conns_.erase(it);
    for (auto& [key, value] : on_disc) {
      if (data_.count(key) == 0) {
        log(LogLevel::kDebug, "store: client vanished, setting " + key);
        put(key, value);
      }
    }
  }

  int listen_fd_;
  std::string token_;
  StoreLimits limits_;
  std::string refuse_reason_;  // why handle() asked for a drop, to log
  struct LogWindow {
    Clock::time_point start;
    int logged = 0, muted = 0;
  };
  std::map<std::string, LogWindow> log_windows_;
  int wake_[2] = {-1, -1};
  std::atomic<bool> stopping_{false};
  std::atomic<int> clients_{0};
  std::list<int> pending_;  // connections still to present the token, oldest first
  std::thread thread_;
  std::unordered_map<int, Conn> conns_;
  std::map<std::string, std::string> data_;
  std::list<Parked> parked_;
};

StoreServer::StoreServer(const std::string& host, int port, std::string token,
                         StoreLimits limits) {
  int fd = detail::net::listen_tcp(host, port, &port_);
  ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) | O_NONBLOCK);
  impl_ = std::make_unique<Impl>(fd, std::move(token), limits);
}

StoreServer::~StoreServer() { stop(); }

int StoreServer::clients() const { return impl_->clients(); }

void StoreServer::stop() {
  if (impl_) impl_->stop();
}

}  // namespace tenax
