#include "tenax/store/etcd_store.h"

#include <unistd.h>

#include <algorithm>
#include <random>

#include "store/etcd_client.h"
#include "tenax/core/error.h"
#include "tenax/core/logging.h"

namespace tenax {

using detail::base64_decode;
using detail::base64_encode;
using detail::etcd_int;
using json = nlohmann::json;

namespace {

// Internal keys sit under the job's prefix behind a byte no tenax key starts with:
//   <prefix>\x01alive/<client>         leased: exists while the client keeps its lease alive
//   <prefix>\x01od/<client>/<key>      the value to set <key> to once that lease is gone
const char kInternal = '\x01';
// How long one watch runs before the keys are read again (a member that went silent is
// noticed, and an expired lease's records reaped, within this).
constexpr std::chrono::milliseconds kWatchSlice{1000};
constexpr std::chrono::milliseconds kReapEvery{100};

// The first key after every key that starts with `prefix` (etcd's range_end for a prefix).
std::string prefix_end(std::string prefix) {
  while (!prefix.empty()) {
    if (static_cast<unsigned char>(prefix.back()) < 0xff) {
      prefix.back() = char(prefix.back() + 1);
      return prefix;
    }
    prefix.pop_back();
  }
  return std::string(1, '\0');
}

std::string random_id() {
  std::random_device rd;
  char host[64] = {0};
  ::gethostname(host, sizeof(host) - 1);
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%08x%08x", rd(), rd());
  return std::string(host) + "-" + std::to_string(::getpid()) + "-" + buf;
}

json put_op(const std::string& key, const std::string& value, int64_t lease = 0) {
  json put = {{"key", base64_encode(key)}, {"value", base64_encode(value)}};
  if (lease) put["lease"] = std::to_string(lease);
  return {{"request_put", put}};
}

json range_of(const std::string& key) { return {{"key", base64_encode(key)}}; }

// Transaction conditions: `key` does not exist; `key` was last modified at revision `mod`;
// `key` holds `value`.
json absent(const std::string& key) {
  return {{"key", base64_encode(key)},
          {"target", "CREATE"},
          {"result", "EQUAL"},
          {"create_revision", "0"}};
}
json unchanged_since(const std::string& key, int64_t mod) {
  return {{"key", base64_encode(key)},
          {"target", "MOD"},
          {"result", "EQUAL"},
          {"mod_revision", std::to_string(mod)}};
}
json holds(const std::string& key, const std::string& value) {
  return {{"key", base64_encode(key)},
          {"target", "VALUE"},
          {"result", "EQUAL"},
          {"value", base64_encode(value)}};
}

// "host:port" with a numeric port.
bool is_host_port(const std::string& s) {
  const auto colon = s.rfind(':');
  return colon != std::string::npos && colon != 0 && colon + 1 != s.size() &&
         s.find_first_not_of("0123456789", colon + 1) == std::string::npos;
}

json prefix_range(const std::string& prefix, bool keys_only) {
  json r = {{"key", base64_encode(prefix)}, {"range_end", base64_encode(prefix_end(prefix))}};
  if (keys_only) r["keys_only"] = true;
  return r;
}

const json& responses(const json& txn) {
  static const json empty = json::array();
  auto it = txn.find("responses");
  return it == txn.end() ? empty : *it;
}

// The key-values of a range reply, or of a transaction's response_range.
json kvs_of(const json& reply) {
  const json* r = &reply;
  auto range = reply.find("response_range");
  if (range != reply.end()) r = &*range;
  auto it = r->find("kvs");
  return it == r->end() ? json::array() : *it;
}

}  // namespace

EtcdOptions EtcdOptions::parse(const std::string& address) {
  EtcdOptions o;
  std::string rest;
  if (address.rfind("etcd://", 0) == 0) {
    rest = address.substr(7);
  } else if (address.rfind("etcds://", 0) == 0) {
    rest = address.substr(8);
  } else {
    throw ConfigError("store address '" + address + "' is not etcd://host:port[,host:port…]");
  }
  const auto slash = rest.find('/');
  if (slash != std::string::npos) {
    std::string path = rest.substr(slash + 1);
    rest = rest.substr(0, slash);
    if (!path.empty()) o.prefix = path.back() == '/' ? path : path + "/";
  }
  size_t start = 0;
  while (start <= rest.size()) {
    size_t comma = rest.find(',', start);
    if (comma == std::string::npos) comma = rest.size();
    const std::string ep = rest.substr(start, comma - start);
    if (!is_host_port(ep)) {
      throw ConfigError("store address '" + address + "': endpoint '" + ep + "' is not host:port");
    }
    o.endpoints.push_back(ep);
    start = comma + 1;
  }
  o.tls = address.rfind("etcds://", 0) == 0;
  return o;
}

bool EtcdOptions::is_etcd_address(const std::string& address) {
  return address.rfind("etcd://", 0) == 0 || address.rfind("etcds://", 0) == 0;
}

EtcdStore::EtcdStore(EtcdOptions options)
    : options_(std::move(options)),
      id_(random_id()),
      client_(std::make_unique<detail::EtcdClient>(options_)) {}

std::shared_ptr<EtcdStore> EtcdStore::connect(const EtcdOptions& options,
                                              std::chrono::milliseconds timeout) {
  if (options.tls && options.ca_file.empty()) {
    throw ConfigError("etcd at " + (options.endpoints.empty() ? "" : options.endpoints[0]) +
                      ": TLS (etcds://) needs a CA file (EtcdOptions::ca_file, TENAX_ETCD_CACERT)");
  }
  std::shared_ptr<EtcdStore> store(new EtcdStore(options));
  store->set_timeout(timeout);
  // One read proves a member answers, with a leader, and that the credentials are good.
  store->client_->post("/v3/kv/range", range_of(store->full("")), Clock::now() + timeout);
  return store;
}

EtcdStore::~EtcdStore() { close(); }

std::string EtcdStore::describe() const { return client_->describe(); }

std::string EtcdStore::local_address() const {
  std::lock_guard<std::mutex> lock(mu_);
  return client_->local_address();
}

void EtcdStore::check_open() const {
  if (closed_) throw StoreError("client of " + describe() + " is closed");
  if (lease_lost_) {
    throw StoreError("this client's lease on " + describe() +
                     " expired: the others were told it is gone");
  }
}

void EtcdStore::set(const std::string& key, const std::string& value) {
  std::lock_guard<std::mutex> lock(mu_);
  check_open();
  client_->post("/v3/kv/put", put_op(full(key), value)["request_put"], Clock::now() + timeout_);
}

std::optional<std::string> EtcdStore::try_get(const std::string& key) {
  std::lock_guard<std::mutex> lock(mu_);
  check_open();
  reap(false);
  int64_t revision = 0;
  return read({full(key)}, &revision, Clock::now() + timeout_)[0];
}

std::string EtcdStore::get(const std::string& key, std::chrono::milliseconds timeout) {
  return wait_any({key}, timeout).second;
}

int64_t EtcdStore::add(const std::string& key, int64_t delta) {
  std::lock_guard<std::mutex> lock(mu_);
  check_open();
  const auto deadline = Clock::now() + timeout_;
  const std::string k = full(key);
  for (;;) {
    auto reply = client_->post("/v3/kv/range", range_of(k), deadline);
    const auto& kvs = kvs_of(reply);
    int64_t value = 0, mod = 0;
    if (!kvs.empty()) {
      mod = etcd_int(kvs[0], "mod_revision");
      try {
        value = std::stoll(base64_decode(kvs[0].value("value", "")));
      } catch (const std::exception&) {
        throw StoreError("add on key '" + key + "': value is not an integer");
      }
    }
    const int64_t next = value + delta;
    const json compare = mod ? unchanged_since(k, mod) : absent(k);
    auto txn = client_->post("/v3/kv/txn",
                             {{"compare", json::array({compare})},
                              {"success", json::array({put_op(k, std::to_string(next))})}},
                             deadline);
    if (txn.value("succeeded", false)) return next;  // else someone else added first: again
  }
}

std::string EtcdStore::compare_set(const std::string& key, const std::string& expected,
                                   const std::string& desired) {
  std::lock_guard<std::mutex> lock(mu_);
  check_open();
  const std::string k = full(key);
  const json compare = expected.empty() ? absent(k) : holds(k, expected);
  auto txn = client_->post("/v3/kv/txn",
                           {{"compare", json::array({compare})},
                            {"success", json::array({put_op(k, desired)})},
                            {"failure", json::array({{{"request_range", range_of(k)}}})}},
                           Clock::now() + timeout_);
  if (txn.value("succeeded", false)) return desired;
  const auto& r = responses(txn);
  if (r.empty()) return "";
  const auto& kvs = kvs_of(r[0]);
  return kvs.empty() ? "" : base64_decode(kvs[0].value("value", ""));
}

bool EtcdStore::delete_key(const std::string& key) {
  std::lock_guard<std::mutex> lock(mu_);
  check_open();
  auto reply = client_->post("/v3/kv/deleterange", range_of(full(key)), Clock::now() + timeout_);
  return etcd_int(reply, "deleted") > 0;
}

std::vector<std::string> EtcdStore::list(const std::string& prefix) {
  std::lock_guard<std::mutex> lock(mu_);
  check_open();
  reap(false);
  auto reply =
      client_->post("/v3/kv/range", prefix_range(full(prefix), true), Clock::now() + timeout_);
  std::vector<std::string> keys;
  for (const auto& kv : kvs_of(reply)) {
    std::string k = base64_decode(kv.value("key", "")).substr(options_.prefix.size());
    if (!k.empty() && k[0] == kInternal) continue;
    keys.push_back(std::move(k));
  }
  std::sort(keys.begin(), keys.end());
  return keys;
}

std::vector<std::optional<std::string>> EtcdStore::read(const std::vector<std::string>& keys,
                                                        int64_t* revision,
                                                        Clock::time_point deadline) {
  json ops = json::array();
  for (const auto& k : keys) ops.push_back({{"request_range", range_of(k)}});
  auto txn = client_->post("/v3/kv/txn", {{"success", ops}}, deadline);
  *revision = etcd_int(txn.value("header", json::object()), "revision");
  std::vector<std::optional<std::string>> values(keys.size());
  const auto& r = responses(txn);
  for (size_t i = 0; i < keys.size() && i < r.size(); ++i) {
    const auto& kvs = kvs_of(r[i]);
    if (!kvs.empty()) values[i] = base64_decode(kvs[0].value("value", ""));
  }
  return values;
}

void EtcdStore::reap(bool force) {
  const auto now = Clock::now();
  if (!force && now - last_reap_ < kReapEvery) return;
  last_reap_ = now;
  const std::string od = options_.prefix + kInternal + "od/";
  const std::string alive = options_.prefix + kInternal + "alive/";
  auto txn =
      client_->post("/v3/kv/txn",
                    {{"success", json::array({{{"request_range", prefix_range(od, false)}},
                                              {{"request_range", prefix_range(alive, true)}}})}},
                    now + timeout_);
  const auto& r = responses(txn);
  if (r.size() < 2) return;
  const auto& records = kvs_of(r[0]);
  if (records.empty()) return;
  std::vector<std::string> live;
  for (const auto& kv : kvs_of(r[1])) {
    live.push_back(base64_decode(kv.value("key", "")).substr(alive.size()));
  }
  for (const auto& kv : records) {
    const std::string record = base64_decode(kv.value("key", ""));
    const std::string rest = record.substr(od.size());
    const auto slash = rest.find('/');
    if (slash == std::string::npos) continue;
    if (std::find(live.begin(), live.end(), rest.substr(0, slash)) != live.end()) continue;
    // Its owner's lease expired: set the key unless someone did, and drop the record (only if
    // it is still the record read, so two reapers do not both act).
    const std::string target = options_.prefix + rest.substr(slash + 1);
    const std::string value = base64_decode(kv.value("value", ""));
    const json same = unchanged_since(record, etcd_int(kv, "mod_revision"));
    const json drop = {{"request_delete_range", range_of(record)}};
    auto done = client_->post("/v3/kv/txn",
                              {{"compare", json::array({same, absent(target)})},
                               {"success", json::array({put_op(target, value), drop})}},
                              now + timeout_);
    if (!done.value("succeeded", false)) {
      client_->post("/v3/kv/txn",
                    {{"compare", json::array({same})}, {"success", json::array({drop})}},
                    now + timeout_);
    }
  }
}

template <typename Done>
void EtcdStore::wait_until(const std::vector<std::string>& keys, std::chrono::milliseconds timeout,
                           Done done) {
  std::lock_guard<std::mutex> lock(mu_);
  check_open();
  const auto deadline = Clock::now() + timeout;
  std::vector<std::string> names;
  for (const auto& k : keys) names.push_back(full(k));
  const std::string alive = options_.prefix + kInternal + "alive/";
  bool force = true;
  for (;;) {
    reap(force);
    int64_t revision = 0;
    // Reads are bounded by timeout() even when the wait's own deadline is nearer.
    auto values = read(names, &revision, std::max(deadline, Clock::now() + timeout_));
    if (done(values)) return;
    if (Clock::now() >= deadline) throw TimeoutError("");
    // Watch the keys and lease expiries from the revision just read: nothing is missed.
    std::vector<json> requests;
    const std::string start = std::to_string(revision + 1);
    for (const auto& n : names) {
      requests.push_back(
          {{"create_request", {{"key", base64_encode(n)}, {"start_revision", start}}}});
    }
    json lease_gone = prefix_range(alive, false);
    lease_gone["start_revision"] = start;
    lease_gone["filters"] = json::array({"NOPUT"});
    requests.push_back({{"create_request", lease_gone}});
    const bool event = client_->watch(requests, std::min(deadline, Clock::now() + kWatchSlice));
    force = event;  // a lease may have expired: reap before reading
    check_open();
  }
}

void EtcdStore::wait(const std::vector<std::string>& keys, std::chrono::milliseconds timeout) {
  std::vector<std::string> missing;
  try {
    wait_until(keys, timeout, [&](const std::vector<std::optional<std::string>>& values) {
      missing.clear();
      for (size_t i = 0; i < keys.size(); ++i) {
        if (!values[i]) missing.push_back(keys[i]);
      }
      return missing.empty();
    });
  } catch (const TimeoutError&) {
    std::string names;
    for (const auto& k : missing) names += (names.empty() ? "'" : ", '") + k + "'";
    throw TimeoutError("store keys " + names + " were not set within " +
                       std::to_string(timeout.count()) + " ms (" + describe() + ")");
  }
}

std::pair<size_t, std::string> EtcdStore::wait_any(const std::vector<std::string>& keys,
                                                   std::chrono::milliseconds timeout) {
  std::pair<size_t, std::string> found;
  try {
    wait_until(keys, timeout, [&](const std::vector<std::optional<std::string>>& values) {
      for (size_t i = 0; i < keys.size(); ++i) {
        if (values[i]) {
          found = {i, *values[i]};
          return true;
        }
      }
      return false;
    });
  } catch (const TimeoutError&) {
    std::string names;
    for (const auto& k : keys) names += (names.empty() ? "'" : ", '") + k + "'";
    const std::string what = keys.size() == 1 ? "store key " + names + " was"
                                              : "none of the store keys " + names + " was";
    throw TimeoutError(what + " not set within " + std::to_string(timeout.count()) + " ms (" +
                       describe() + ")");
  }
  return found;
}

void EtcdStore::set_on_disconnect(const std::string& key, const std::string& value) {
  std::lock_guard<std::mutex> lock(mu_);
  check_open();
  const auto deadline = Clock::now() + timeout_;
  if (lease_ == 0) {
    // The lease and its alive key come first: a record without them would be reaped at once.
    auto grant = client_->post("/v3/lease/grant",
                               {{"TTL", std::to_string(options_.lease_ttl.count())}}, deadline);
    lease_ = etcd_int(grant, "ID");
    if (lease_ == 0) throw StoreError(describe() + " granted no lease: " + grant.dump());
    client_->post("/v3/kv/put",
                  put_op(options_.prefix + kInternal + "alive/" + id_, "", lease_)["request_put"],
                  deadline);
    keeper_client_ = std::make_unique<detail::EtcdClient>(options_);
    keeper_ = std::thread([this] { keep_alive(); });
  }
  const std::string record = options_.prefix + kInternal + "od/" + id_ + "/" + key;
  client_->post("/v3/kv/put", put_op(record, value)["request_put"], deadline);
  records_.push_back(record);
}

std::chrono::milliseconds EtcdStore::disconnect_notice() const {
  return std::chrono::duration_cast<std::chrono::milliseconds>(options_.lease_ttl) + kWatchSlice;
}

void EtcdStore::keep_alive() {
  const auto period = std::chrono::milliseconds(options_.lease_ttl) / 3;
  std::unique_lock<std::mutex> lock(keeper_mu_);
  while (!keeper_cv_.wait_for(lock, period, [this] { return keeper_stop_; })) {
    lock.unlock();
    try {
      // Until shortly before the lease would lapse, trying every member in turn.
      const auto budget = std::max<std::chrono::milliseconds>(
          period, std::chrono::milliseconds(options_.lease_ttl) - period);
      auto reply = keeper_client_->post("/v3/lease/keepalive", {{"ID", std::to_string(lease_)}},
                                        Clock::now() + budget);
      const auto& result = reply.contains("result") ? reply["result"] : reply;
      if (etcd_int(result, "TTL") <= 0) {
        lease_lost_ = true;
        log(LogLevel::kError, "lease of this client on " + describe() +
                                  " expired (keep-alives did not arrive in time): the others "
                                  "were told this process is gone");
        return;
      }
    } catch (const Error& e) {
      log(LogLevel::kWarning, std::string("lease keep-alive failed, retrying: ") + e.what());
    }
    lock.lock();
  }
}

std::shared_ptr<Store> EtcdStore::clone() const { return connect(options_, timeout_); }

void EtcdStore::interrupt() noexcept { client_->interrupt(); }

void EtcdStore::close() noexcept {
  {
    std::lock_guard<std::mutex> lock(keeper_mu_);
    keeper_stop_ = true;
  }
  keeper_cv_.notify_all();
  if (keeper_.joinable()) keeper_.join();
  std::lock_guard<std::mutex> lock(mu_);
  if (closed_) return;
  closed_ = true;
  if (lease_ == 0) return;
  // Goodbye, on the keeper's client (this one may have been interrupted): drop the records,
  // then the lease (the order in which a reaper can never misread them).
  const auto deadline = Clock::now() + std::chrono::milliseconds(2000);
  try {
    for (const auto& r : records_)
      keeper_client_->post("/v3/kv/deleterange", range_of(r), deadline);
    keeper_client_->post("/v3/lease/revoke", {{"ID", std::to_string(lease_)}}, deadline);
  } catch (const std::exception& e) {
    log(LogLevel::kDebug, std::string("etcd client goodbye failed: ") + e.what());
  }
}


// Part of the launch edge: an address as launchers give it, with the environment's credentials.
std::shared_ptr<Store> open_store(const std::string& address, const std::string& token,
                                  std::chrono::milliseconds timeout) {
  if (EtcdOptions::is_etcd_address(address)) {
    return EtcdStore::connect(EtcdOptions::from_environment(address), timeout);
  }
  if (!is_host_port(address)) {
    throw ConfigError("store address '" + address + "' is neither host:port nor etcd://…");
  }
  const auto colon = address.rfind(':');
  return TcpStore::connect(address.substr(0, colon), std::stoi(address.substr(colon + 1)), token,
                           timeout);
}

}  // namespace tenax
