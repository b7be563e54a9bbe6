#include "tenax/core/config.h"

#include <strings.h>
#include <unistd.h>

#include <cstdlib>

#include "tenax/core/error.h"

namespace tenax {
namespace {

std::chrono::milliseconds parse_timeout() {
  auto v = env_string("TENAX_TIMEOUT");
  if (!v) return std::chrono::seconds(30);
  char* end = nullptr;
  double sec = std::strtod(v->c_str(), &end);
  if (end == v->c_str() || *end != '\0' || !(sec > 0)) {
    throw ConfigError("TENAX_TIMEOUT='" + *v + "' must be a positive number of seconds");
  }
  return std::chrono::milliseconds(static_cast<long long>(sec * 1000.0));
}

AwsEnvironment read_aws() {
  auto first = [](std::initializer_list<const char*> names) {
    for (const char* n : names) {
      if (auto v = env_string(n)) return *v;
    }
    return std::string();
  };
  AwsEnvironment a;
  a.region = first({"AWS_REGION", "AWS_DEFAULT_REGION"});
  a.endpoint = first({"AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"});
  a.access_key = first({"AWS_ACCESS_KEY_ID"});
  a.secret_key = first({"AWS_SECRET_ACCESS_KEY"});
  a.session_token = first({"AWS_SESSION_TOKEN"});
  a.credentials_file = first({"AWS_SHARED_CREDENTIALS_FILE"});
  if (a.credentials_file.empty()) a.credentials_file = first({"HOME"}) + "/.aws/credentials";
  a.profile = first({"AWS_PROFILE"});
  if (a.profile.empty()) a.profile = "default";
  return a;
}

// A variable that, when set, must be a positive integer (0 when unset).
int64_t positive(const char* name) {
  const long long v = env_int(name, 0);
  if (env_string(name) && v <= 0) {
    throw ConfigError(std::string("environment variable ") + name + "='" + *env_string(name) +
                      "' must be a positive integer");
  }
  return v;
}

ObserveEnvironment read_observe() {
  ObserveEnvironment o;
  if (auto v = env_string("TENAX_METRICS_PORT")) {
    o.metrics_port = env_int("TENAX_METRICS_PORT", -1);
    if (o.metrics_port < 0 || o.metrics_port > 65535) {
      throw ConfigError("TENAX_METRICS_PORT='" + *v + "' is not a port (0-65535)");
    }
  }
  o.metrics_address = env_string("TENAX_METRICS_ADDR").value_or("127.0.0.1");
  o.job = env_string("TENAX_JOB").value_or("");
  o.events_file = env_string("TENAX_EVENTS_FILE").value_or("");
  o.flight_dir = env_string("TENAX_FLIGHT_DIR").value_or("");
  o.flight_entries = positive("TENAX_FLIGHT_ENTRIES");
  const std::string format = env_string("TENAX_LOG_FORMAT").value_or("text");
  if (strcasecmp(format.c_str(), "json") != 0 && strcasecmp(format.c_str(), "text") != 0) {
    throw ConfigError("TENAX_LOG_FORMAT='" + format + "' must be text or json");
  }
  o.json_logs = strcasecmp(format.c_str(), "json") == 0;
  return o;
}

Settings read_settings() {
  Settings s;
  s.timeout = parse_timeout();
  s.debug_collectives = env_flag("TENAX_DEBUG_COLLECTIVES");
  s.shared_memory = env_int("TENAX_SHM", 1) != 0;
  s.hostname = env_string("TENAX_HOSTNAME").value_or("");
  s.log_level = env_string("TENAX_LOG_LEVEL").value_or("");
  s.fault = env_string("TENAX_FAULT").value_or("");
  s.restart_count = env_int("TENAX_RESTART_COUNT", 0);
  s.active_workers = env_int("TENAX_ACTIVE_WORKERS", 0);
  s.preflight = env_flag("TENAX_PREFLIGHT");
  s.aws = read_aws();
  s.etcd.user = env_string("TENAX_ETCD_USER").value_or("");
  s.etcd.password = env_string("TENAX_ETCD_PASSWORD").value_or("");
  s.etcd.ca_file = env_string("TENAX_ETCD_CACERT").value_or("");
  s.etcd.cert_file = env_string("TENAX_ETCD_CERT").value_or("");
  s.etcd.key_file = env_string("TENAX_ETCD_KEY").value_or("");
  s.etcd.lease_ttl_s = positive("TENAX_ETCD_LEASE_TTL");
  s.store_server.max_frame = positive("TENAX_STORE_MAX_FRAME");
  s.store_server.hello_timeout_ms = positive("TENAX_STORE_HELLO_TIMEOUT_MS");
  s.store_server.max_unauthenticated = positive("TENAX_STORE_MAX_UNAUTHENTICATED");
  s.observe = read_observe();
  return s;
}

}  // namespace

const Settings& settings() {
  static const Settings s = read_settings();
  return s;
}

std::string host_name() {
  char host[256] = {0};
  ::gethostname(host, sizeof(host) - 1);
  return host;
}

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

std::chrono::milliseconds default_timeout() { return settings().timeout; }

}  // namespace tenax
