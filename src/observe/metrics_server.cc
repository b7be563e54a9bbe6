#include <httplib.h>
#include <pthread.h>

#include <csignal>
#include <thread>

#include "tenax/core/error.h"
#include "tenax/core/metrics.h"
#include "tenax/observe/exposition.h"
#include "tenax/observe/observe.h"

namespace tenax::observe {
namespace {

// httplib writes without MSG_NOSIGNAL. While one lives, a SIGPIPE this thread's writes raise
// stays this thread's (blocked), and is taken back before the mask is restored: a peer that hung
// up is an error here, never the program's signal.
class HoldSigpipe {
 public:
  HoldSigpipe() {
    sigemptyset(&pipe_);
    sigaddset(&pipe_, SIGPIPE);
    sigset_t pending;
    sigpending(&pending);
    was_pending_ = sigismember(&pending, SIGPIPE) == 1;
    pthread_sigmask(SIG_BLOCK, &pipe_, &old_);
  }
  ~HoldSigpipe() {
    if (!was_pending_) {
      const timespec none{0, 0};
      while (sigtimedwait(&pipe_, nullptr, &none) == SIGPIPE) {
      }
    }
    pthread_sigmask(SIG_SETMASK, &old_, nullptr);
  }
  HoldSigpipe(const HoldSigpipe&) = delete;
  HoldSigpipe& operator=(const HoldSigpipe&) = delete;

 private:
  sigset_t pipe_, old_;
  bool was_pending_ = false;
};

}  // namespace

struct MetricsServer::Impl {
  httplib::Server server;
  std::thread thread;
};

MetricsServer::MetricsServer(const std::string& address, int port,
                             std::function<std::string()> render, const std::string& what)
    : impl_(std::make_unique<Impl>()) {
  if (!render) render = [] { return metrics::registry().render(); };
  impl_->server.Get("/metrics", [render](const httplib::Request&, httplib::Response& res) {
    res.set_content(render(), "text/plain; version=0.0.4; charset=utf-8");
  });
  impl_->server.Get("/", [](const httplib::Request&, httplib::Response& res) {
    res.set_content("tenax: metrics at /metrics\n", "text/plain");
  });
  impl_->server.set_keep_alive_max_count(100);
  const std::string where =
      address + ":" + std::to_string(port) + (what.empty() ? "" : " (" + what + ")");
  if (port < 0 || port > 65535)
    throw ConfigError("metrics endpoint: port " + where + " is not a port");
  if (port == 0) {
    port_ = impl_->server.bind_to_any_port(address);
    if (port_ <= 0) throw ConfigError("metrics endpoint: cannot listen on " + where);
  } else {
    if (!impl_->server.bind_to_port(address, port)) {
      throw ConfigError("metrics endpoint: cannot listen on " + where + ": port " +
                        std::to_string(port) + " is in use (or the address is not this host's)");
    }
    port_ = port;
  }
  impl_->thread = std::thread([this] {
    // The threads that answer are started here and inherit the blocked SIGPIPE.
    HoldSigpipe hold;
    impl_->server.listen_after_bind();
  });
}

std::optional<std::string> fetch_metrics(const std::string& host, int port, int timeout_ms) {
  HoldSigpipe hold;
  httplib::Client client(host, port);
  const time_t sec = timeout_ms / 1000;
  const time_t usec = (timeout_ms % 1000) * 1000;
  client.set_connection_timeout(sec, usec);
  client.set_read_timeout(sec, usec);
  client.set_write_timeout(sec, usec);
  auto res = client.Get("/metrics");
  if (!res || res->status != 200) return std::nullopt;
  return res->body;
}

MetricsServer::~MetricsServer() {
  impl_->server.stop();
  if (impl_->thread.joinable()) impl_->thread.join();
}

}  // namespace tenax::observe
