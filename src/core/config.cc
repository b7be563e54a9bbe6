#include "tenax/core/config.h"

#include <cstdlib>
#include <strings.h>

#include "tenax/core/error.h"

namespace tenax {

std::optional<std::string> env_string(const char* name) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0') return std::nullopt;
  return std::string(v);
}

long long env_int(const char* name, long long fallback) {
  auto v = env_string(name);
  if (!v) return fallback;
  char* end = nullptr;
  long long x = std::strtoll(v->c_str(), &end, 10);
  if (end == v->c_str() || *end != '\0') {
    throw ConfigError(std::string("environment variable ") + name + "='" + *v +
                      "' is not an integer");
  }
  return x;
}

bool env_flag(const char* name) {
  auto v = env_string(name);
  if (!v) return false;
  for (const char* yes : {"1", "true", "yes", "on"}) {
    if (strcasecmp(v->c_str(), yes) == 0) return true;
  }
  return false;
}

std::chrono::milliseconds default_timeout() {
  auto v = env_string("TENAX_TIMEOUT");
  if (!v) return std::chrono::seconds(30);
  char* end = nullptr;
  double sec = std::strtod(v->c_str(), &end);
  if (end == v->c_str() || *end != '\0' || !(sec > 0)) {
    throw ConfigError("TENAX_TIMEOUT='" + *v + "' must be a positive number of seconds");
  }
  return std::chrono::milliseconds(static_cast<long long>(sec * 1000.0));
}

bool debug_collectives() { return env_flag("TENAX_DEBUG_COLLECTIVES"); }

}  // namespace tenax
