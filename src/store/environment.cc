// The store layer's launch edge: its options as the environment asks for them.

#include "store/net.h"
#include "tenax/core/config.h"
#include "tenax/core/error.h"
#include "tenax/store/etcd_store.h"
#include "tenax/store/launch.h"
#include "tenax/store/store_server.h"

namespace tenax {

StoreLimits StoreLimits::from_environment() {
  StoreLimits l;
  const StoreServerEnvironment& env = settings().store_server;
  if (env.max_frame > 0) l.max_frame = static_cast<size_t>(env.max_frame);
  if (env.hello_timeout_ms > 0) l.hello_timeout = std::chrono::milliseconds(env.hello_timeout_ms);
  if (env.max_unauthenticated > 0) l.max_unauthenticated = static_cast<int>(env.max_unauthenticated);
  return l;
}

EtcdOptions EtcdOptions::from_environment(const std::string& address) {
  EtcdOptions o = parse(address);
  const EtcdEnvironment& env = settings().etcd;
  o.user = env.user;
  o.password = env.password;
  o.ca_file = env.ca_file;
  o.cert_file = env.cert_file;
  o.key_file = env.key_file;
  if (o.tls && o.ca_file.empty()) {
    throw ConfigError("store address '" + address + "' asks for TLS: set TENAX_ETCD_CACERT");
  }
  if (env.lease_ttl_s > 0) o.lease_ttl = std::chrono::seconds(env.lease_ttl_s);
  return o;
}

std::string reachable_host_address() {
  return detail::net::reachable_host_address(settings().hostname);
}

}  // namespace tenax
