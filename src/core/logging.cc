#include "tenax/core/logging.h"

#include <cstdio>
#include <mutex>
#include <optional>
#include <strings.h>

#include "tenax/core/config.h"

namespace tenax {
namespace {

LogLevel threshold() {
  static const LogLevel level = [] {
    std::optional<std::string> v;
    try {
      if (!settings().log_level.empty()) v = settings().log_level;
    } catch (const std::exception&) {
      // A malformed setting is reported by the call that needs it; logging stays at info.
    }
    if (!v) return LogLevel::kInfo;
    if (strcasecmp(v->c_str(), "debug") == 0) return LogLevel::kDebug;
    if (strcasecmp(v->c_str(), "warning") == 0) return LogLevel::kWarning;
    if (strcasecmp(v->c_str(), "error") == 0) return LogLevel::kError;
    return LogLevel::kInfo;
  }();
  return level;
}

}  // namespace

void log(LogLevel level, const std::string& message) {
  if (level < threshold()) return;
  static const char* names[] = {"DEBUG", "INFO", "WARNING", "ERROR"};
  static std::mutex mu;
  std::lock_guard<std::mutex> lock(mu);
  std::fprintf(stderr, "tenax %s %s\n", names[static_cast<int>(level)], message.c_str());
  std::fflush(stderr);
}

}  // namespace tenax
