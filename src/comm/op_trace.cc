#include "comm/op_trace.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <thread>

#include "tenax/comm/flight_recorder.h"
#include "tenax/core/config.h"
#include "tenax/core/error.h"
#include "tenax/core/logging.h"

namespace tenax::detail {
namespace {

constexpr const char* kOpNames[] = {"all_reduce", "reduce_scatter", "all_gather",
                                    "broadcast",  "reduce",         "all_to_all",
                                    "send",       "recv",           "barrier"};
constexpr const char* kErrorKinds[] = {"peer_lost", "timeout", "aborted", "bad_argument", "other"};

int error_kind(const std::exception_ptr& err) {
  try {
    std::rethrow_exception(err);
  } catch (const PeerLostError&) {
    return 0;
  } catch (const TimeoutError&) {
    return 1;
  } catch (const AbortedError&) {
    return 2;
  } catch (const ConfigError&) {
    return 3;
  } catch (...) {
    return 4;
  }
}

int64_t unix_us() {
  timeval tv;
  gettimeofday(&tv, nullptr);
  return static_cast<int64_t>(tv.tv_sec) * 1000000 + tv.tv_usec;
}

// Every live OpTrace of the process, for dumps.
struct Traces {
  std::mutex mu;
  std::vector<const OpTrace*> live;  // guarded by mu
  std::string who;                   // guarded by mu
  FlightRecorderOptions options;     // guarded by mu
  bool options_set = false;          // guarded by mu
  std::atomic<int64_t> last_dump_us{0};
};

Traces& traces() {
  static Traces* t = new Traces();  // never destroyed: communicators may outlive statics
  return *t;
}

// SIGUSR1 → one byte on a pipe → a thread that dumps; then the handler the program had (a
// function) runs too. Stopped and joined at exit, the program's handler put back.
class SignalDumper {
 public:
  SignalDumper() {
    if (pipe2(fds_, O_CLOEXEC) != 0) return;
    write_fd_.store(fds_[1]);
    thread_ = std::thread([this] { loop(); });
    sigaction(SIGUSR1, nullptr, &previous_);
    struct sigaction sa {};
    sa.sa_sigaction = &SignalDumper::on_signal;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART | SA_SIGINFO;
    sigaction(SIGUSR1, &sa, nullptr);
  }
  ~SignalDumper() {
    if (!thread_.joinable()) return;
    sigaction(SIGUSR1, &previous_, nullptr);
    const char stop = 0;
    (void)!write(fds_[1], &stop, 1);
    thread_.join();
    write_fd_.store(-1);
    close(fds_[0]);
    close(fds_[1]);
  }

 private:
  static void on_signal(int sig, siginfo_t* info, void* context) {
    const int fd = write_fd_.load();
    const char go = 1;
    if (fd >= 0) (void)!write(fd, &go, 1);
    if (previous_.sa_flags & SA_SIGINFO) {
      if (previous_.sa_sigaction != nullptr) previous_.sa_sigaction(sig, info, context);
    } else if (previous_.sa_handler != SIG_DFL && previous_.sa_handler != SIG_IGN &&
               previous_.sa_handler != nullptr) {
      previous_.sa_handler(sig);
    }
  }
  void loop() {
    for (;;) {
      char c = 0;
      const ssize_t n = read(fds_[0], &c, 1);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0 || c == 0) return;
      const std::string path = dump_flight_records("SIGUSR1");
      if (!path.empty()) log(LogLevel::kInfo, "flight recorder: SIGUSR1: wrote " + path);
    }
  }

  static std::atomic<int> write_fd_;
  static struct sigaction previous_;  // written before the handler is in place
  int fds_[2] = {-1, -1};
  std::thread thread_;
};
std::atomic<int> SignalDumper::write_fd_{-1};
struct sigaction SignalDumper::previous_ {};

}  // namespace

const char* op_name(OpKind op) {
  const int i = static_cast<int>(op);
  return i >= 0 && i < static_cast<int>(OpKind::kCount) ? kOpNames[i] : "?";
}

OpKind op_kind(const std::string& name) {
  for (int i = 0; i < static_cast<int>(OpKind::kCount); ++i) {
    if (name == kOpNames[i]) return static_cast<OpKind>(i);
  }
  return OpKind::kCount;
}

std::string comm_group(const std::string& name) {
  std::string out;
  for (size_t i = 0; i < name.size(); ++i) {
    // "/g<digits>" followed by '/' or the end is a generation: dropped.
    if (name[i] == '/' && i + 1 < name.size() && name[i + 1] == 'g') {
      size_t j = i + 2;
      while (j < name.size() && std::isdigit(static_cast<unsigned char>(name[j]))) ++j;
      if (j > i + 2 && (j == name.size() || name[j] == '/' || name[j] == '.')) {
        i = j - 1;
        continue;
      }
    }
    out += name[i];
  }
  return out;
}

OpTrace::OpTrace(std::string comm_name, int rank, int size, size_t capacity)
    : name_(std::move(comm_name)), group_(comm_group(name_)), rank_(rank), size_(size) {
  if (capacity == 0) {
    Traces& t = traces();
    std::lock_guard<std::mutex> lock(t.mu);
    capacity = t.options.entries > 0 ? t.options.entries : 2048;
  }
  ring_.resize(capacity);
  Traces& t = traces();
  std::lock_guard<std::mutex> lock(t.mu);
  t.live.push_back(this);
}

OpTrace::~OpTrace() {
  Traces& t = traces();
  std::lock_guard<std::mutex> lock(t.mu);
  t.live.erase(std::find(t.live.begin(), t.live.end(), this));
}

OpTrace::OpMetrics& OpTrace::metrics_of(OpKind op) {
  OpMetrics& m = metrics_[static_cast<int>(op)];
  std::call_once(m.found, [&] {
    auto& reg = metrics::registry();
    const metrics::LabelValues labels = {op_name(op), group_};
    m.calls = &reg.family("tenax_comm_operations_total",
                          "Collective and point-to-point operations issued",
                          metrics::Type::kCounter, {"op", "group"})
                   .counter(labels);
    m.bytes = &reg.family("tenax_comm_bytes_total", "Bytes of the tensors operations carried",
                          metrics::Type::kCounter, {"op", "group"})
                   .counter(labels);
    m.seconds =
        &reg.family("tenax_comm_operation_seconds", "Time from an operation's start to its end",
                    metrics::Type::kHistogram, {"op", "group"})
             .histogram(labels);
  });
  return m;
}

uint64_t OpTrace::enqueued(OpKind op, uint64_t seq, c10::ScalarType dtype, int64_t count,
                           int64_t bytes, int peer) {
  OpMetrics& m = metrics_of(op);
  m.calls->inc();
  m.bytes->inc(static_cast<double>(bytes));
  std::lock_guard<std::mutex> lock(mu_);
  const uint64_t id = next_id_++;
  Entry& e = ring_[id % ring_.size()];
  e = Entry{};
  e.id = id;
  e.seq = seq;
  e.op = op;
  e.dtype = dtype;
  e.count = count;
  e.bytes = bytes;
  e.peer = peer;
  e.enqueued_us = unix_us();
  return id;
}

void OpTrace::started(uint64_t id) {
  std::lock_guard<std::mutex> lock(mu_);
  Entry& e = ring_[id % ring_.size()];
  if (e.id != id) return;  // overwritten: the ring moved on
  e.started_us = unix_us();
  e.start = std::chrono::steady_clock::now();
  e.state = kRunning;
}

void OpTrace::count_error(OpKind op, int kind) {
  metrics::registry()
      .family("tenax_comm_errors_total", "Operations that failed, by error",
              metrics::Type::kCounter, {"op", "group", "error"})
      .counter({op_name(op), group_, kErrorKinds[kind]})
      .inc();
}

void OpTrace::refused(OpKind op, const std::exception_ptr& err) {
  count_error(op, error_kind(err));
}

void OpTrace::ended(uint64_t id, const std::exception_ptr& err) {
  OpKind op = OpKind::kCount;
  double seconds = -1;
  const int kind = err ? error_kind(err) : -1;
  {
    std::lock_guard<std::mutex> lock(mu_);
    Entry& e = ring_[id % ring_.size()];
    if (e.id != id) return;
    if (e.started_us == 0) {  // never seen running (e.g. failed in the queue)
      e.started_us = unix_us();
      e.start = std::chrono::steady_clock::now();
    }
    e.ended_us = unix_us();
    e.state = err ? kFailed : kDone;
    op = e.op;
    if (err) {
      e.error = kErrorKinds[kind];
    } else {
      seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - e.start).count();
    }
  }
  if (!err) {
    metrics_of(op).seconds->observe(seconds);
    return;
  }
  count_error(op, kind);
  if (kind > 1) return;  // only a timeout or a lost peer is worth a dump
  Traces& t = traces();
  const int64_t now = unix_us();
  int64_t last = t.last_dump_us.load();
  if (now - last < 1000000 || !t.last_dump_us.compare_exchange_strong(last, now)) return;
  std::string what;
  try {
    std::rethrow_exception(err);
  } catch (const std::exception& x) {
    what = x.what();
  }
  const std::string path = dump_flight_records(std::string(op_name(op)) + " failed: " + what);
  if (!path.empty()) log(LogLevel::kWarning, "flight recorder: wrote " + path);
}

std::string OpTrace::to_json() const {
  static const char* states[] = {"queued", "running", "done", "failed"};
  std::vector<Entry> entries;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (const Entry& e : ring_) {
      if (e.id != 0) entries.push_back(e);
    }
  }
  std::sort(entries.begin(), entries.end(),
            [](const Entry& a, const Entry& b) { return a.id < b.id; });
  std::string out = "{\"name\":" + json_quote(name_) + ",\"group\":" + json_quote(group_) +
                    ",\"rank\":" + std::to_string(rank_) + ",\"size\":" + std::to_string(size_) +
                    ",\"entries\":[";
  for (size_t i = 0; i < entries.size(); ++i) {
    const Entry& e = entries[i];
    if (i > 0) out += ',';
    out += "{\"seq\":" + std::to_string(e.seq) + ",\"op\":\"" + op_name(e.op) + "\",\"dtype\":\"" +
           (e.dtype == c10::ScalarType::Undefined ? "" : c10::toString(e.dtype)) +
           "\",\"count\":" + std::to_string(e.count) + ",\"bytes\":" + std::to_string(e.bytes) +
           ",\"peer\":" + std::to_string(e.peer) +
           ",\"enqueued_us\":" + std::to_string(e.enqueued_us) +
           ",\"started_us\":" + std::to_string(e.started_us) +
           ",\"ended_us\":" + std::to_string(e.ended_us) + ",\"state\":\"" + states[e.state] +
           "\"" + (e.state == kFailed ? std::string(",\"error\":\"") + e.error + "\"" : "") + "}";
  }
  return out + "]}";
}

}  // namespace tenax::detail

namespace tenax {

void set_flight_recorder_options(const FlightRecorderOptions& options) {
  auto& t = detail::traces();
  std::lock_guard<std::mutex> lock(t.mu);
  t.options = options;
  t.options_set = true;
}

bool flight_recorder_options_set() {
  auto& t = detail::traces();
  std::lock_guard<std::mutex> lock(t.mu);
  return t.options_set;
}

namespace {
std::string flight_dir() {
  auto& t = detail::traces();
  std::lock_guard<std::mutex> lock(t.mu);
  return t.options.dir;
}
}  // namespace

void set_flight_identity(const std::string& who) {
  auto& t = detail::traces();
  std::lock_guard<std::mutex> lock(t.mu);
  t.who = who;
}

std::string dump_flight_records(const std::string& reason, const std::string& dir_arg) {
  const std::string dir = dir_arg.empty() ? flight_dir() : dir_arg;
  if (dir.empty()) return "";
  auto& t = detail::traces();
  std::string who, body;
  {
    std::lock_guard<std::mutex> lock(t.mu);
    who = t.who.empty() ? "pid" + std::to_string(getpid()) : t.who;
    body = "{\"who\":" + json_quote(who) + ",\"host\":" + json_quote(host_name()) +
           ",\"pid\":" + std::to_string(getpid()) + ",\"reason\":" + json_quote(reason) +
           ",\"time_us\":" + std::to_string(detail::unix_us()) + ",\"communicators\":[";
    for (size_t i = 0; i < t.live.size(); ++i) {
      if (i > 0) body += ',';
      body += t.live[i]->to_json();
    }
    body += "]}\n";
  }
  const std::string path = dir + "/flight-" + who + ".json";
  const std::string tmp = path + ".tmp" + std::to_string(getpid());
  FILE* f = std::fopen(tmp.c_str(), "w");
  if (f == nullptr || std::fwrite(body.data(), 1, body.size(), f) != body.size() ||
      std::fclose(f) != 0 || std::rename(tmp.c_str(), path.c_str()) != 0) {
    log(LogLevel::kWarning, "flight recorder: cannot write " + path + ": " + std::strerror(errno));
    return "";
  }
  return path;
}

void install_flight_signal_handler() {
  if (flight_dir().empty()) return;
  static detail::SignalDumper dumper;
}

}  // namespace tenax
