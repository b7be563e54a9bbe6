// The core layer's launch edge: its options as the environment asks for them.

#include <strings.h>

#include "tenax/core/config.h"
#include "tenax/core/fault_injection.h"
#include "tenax/core/logging.h"

namespace tenax {

LogOptions LogOptions::from_environment() {
  const Settings& s = settings();
  LogOptions o;
  o.json = s.observe.json_logs;
  const std::string& v = s.log_level;
  if (strcasecmp(v.c_str(), "debug") == 0) o.level = LogLevel::kDebug;
  if (strcasecmp(v.c_str(), "warning") == 0) o.level = LogLevel::kWarning;
  if (strcasecmp(v.c_str(), "error") == 0) o.level = LogLevel::kError;
  return o;
}

FaultInjector FaultInjector::from_env(int rank) {
  // A worker restarted by its agent does not repeat the fault that took its predecessor down.
  if (settings().restart_count > 0) return FaultInjector("", rank);
  return FaultInjector(settings().fault, rank);
}

}  // namespace tenax
