#include "tenax/core/logging.h"

#include <sys/time.h>

#include <atomic>
#include <cstdio>
#include <ctime>
#include <mutex>


namespace tenax {
namespace {

std::atomic<int> g_threshold{static_cast<int>(LogLevel::kInfo)};
std::atomic<bool> g_json{false};
std::atomic<bool> g_set{false};

LogLevel threshold() { return static_cast<LogLevel>(g_threshold.load(std::memory_order_relaxed)); }

const char* const kNames[] = {"DEBUG", "INFO", "WARNING", "ERROR"};
const char* const kJsonNames[] = {"debug", "info", "warning", "error"};

struct Context {
  std::mutex mu;
  std::vector<std::pair<std::string, std::string>> fields;  // guarded by mu
  std::atomic<int64_t> step{-1};
};

Context& context() {
  static Context* c = new Context();  // never destroyed: threads log until exit
  return *c;
}

std::string utc_now() {
  timeval tv;
  gettimeofday(&tv, nullptr);
  tm t;
  gmtime_r(&tv.tv_sec, &t);
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", t.tm_year + 1900,
                t.tm_mon + 1, t.tm_mday, t.tm_hour, t.tm_min, t.tm_sec,
                static_cast<int>(tv.tv_usec / 1000));
  return buf;
}

}  // namespace

void set_log_options(const LogOptions& options) {
  g_threshold.store(static_cast<int>(options.level), std::memory_order_relaxed);
  g_json.store(options.json, std::memory_order_relaxed);
  g_set.store(true);
}

bool log_options_set() { return g_set.load(); }

bool json_logs() { return g_json.load(std::memory_order_relaxed); }

std::string json_quote(const std::string& s) {
  std::string out = "\"";
  for (unsigned char c : s) {
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\t':
        out += "\\t";
        break;
      default:
        if (c < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof(buf), "\\u%04x", c);
          out += buf;
        } else {
          out += static_cast<char>(c);
        }
    }
  }
  return out + "\"";
}

void set_log_context(const std::string& key, const std::string& value) {
  Context& c = context();
  std::lock_guard<std::mutex> lock(c.mu);
  for (auto it = c.fields.begin(); it != c.fields.end(); ++it) {
    if (it->first != key) continue;
    if (value.empty()) {
      c.fields.erase(it);
    } else {
      it->second = value;
    }
    return;
  }
  if (!value.empty()) c.fields.emplace_back(key, value);
}

void set_log_step(int64_t step) { context().step.store(step, std::memory_order_relaxed); }

std::string json_log_line(LogLevel level, const std::string& message,
                          const std::vector<std::pair<std::string, std::string>>& fields) {
  std::string out = "{\"ts\":\"" + utc_now() + "\",\"level\":\"" +
                    kJsonNames[static_cast<int>(level)] + "\",\"msg\":" + json_quote(message);
  Context& c = context();
  {
    std::lock_guard<std::mutex> lock(c.mu);
    for (const auto& [k, v] : c.fields) {
      const bool number = k == "rank" || k == "generation";
      out += "," + json_quote(k) + ":" + (number ? v : json_quote(v));
    }
  }
  const int64_t step = c.step.load(std::memory_order_relaxed);
  if (step >= 0) out += ",\"step\":" + std::to_string(step);
  for (const auto& [k, v] : fields) out += "," + json_quote(k) + ":" + v;
  return out + "}";
}

void log(LogLevel level, const std::string& message) {
  if (level < threshold()) return;
  static std::mutex mu;
  const std::string line =
      json_logs() ? json_log_line(level, message)
                  : "tenax " + std::string(kNames[static_cast<int>(level)]) + " " + message;
  std::lock_guard<std::mutex> lock(mu);
  std::fprintf(stderr, "%s\n", line.c_str());
  std::fflush(stderr);
}

}  // namespace tenax
