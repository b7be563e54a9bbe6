#include "store/etcd_client.h"

#include <curl/curl.h>

#include <algorithm>
#include <mutex>
#include <thread>
#include <vector>

#include "tenax/core/wait_clock.h"
#include "tenax/core/error.h"

namespace tenax::detail {

namespace {

constexpr char kAlphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
// One attempt on one member. etcd answers in milliseconds; a member that went silent (its
// host crashed or was cut off) must cost little, since heartbeats ride on these calls. A
// leader election (about a second) is ridden out by trying the members round after round.
constexpr std::chrono::milliseconds kAttempt{1000};
constexpr long kConnectMs = 500;

// What the gateway answers when the member cannot serve the request now but another member or
// a later try may: gRPC codes Unavailable (14), DeadlineExceeded (4), Aborted (10).
bool transient(const nlohmann::json& err) {
  const int code = err.value("code", 0);
  if (code == 14 || code == 4 || code == 10) return true;
  const std::string m = err.value("message", err.value("error", std::string()));
  return m.find("no leader") != std::string::npos ||
         m.find("leader changed") != std::string::npos ||
         m.find("timed out") != std::string::npos || m.find("not capable") != std::string::npos;
}

// A TLS failure is a refusal, not a member that is down: retrying cannot fix a certificate.
bool tls_refusal(CURLcode code, const std::string& error) {
  switch (code) {
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_CERTPROBLEM:
    case CURLE_SSL_CIPHER:
    case CURLE_SSL_CACERT_BADFILE:
    case CURLE_SSL_ISSUER_ERROR:
      return true;
    case CURLE_RECV_ERROR:  // TLS 1.3: the server's alert comes with the first read
      return error.find("alert") != std::string::npos;
    default:
      return false;
  }
}

size_t on_write(char* data, size_t size, size_t n, void* user);
int on_progress(void* user, curl_off_t, curl_off_t, curl_off_t, curl_off_t);

}  // namespace

std::string base64_encode(const std::string& bytes) {
  std::string out;
  out.reserve((bytes.size() + 2) / 3 * 4);
  size_t i = 0;
  for (; i + 2 < bytes.size(); i += 3) {
    uint32_t v = (uint8_t(bytes[i]) << 16) | (uint8_t(bytes[i + 1]) << 8) | uint8_t(bytes[i + 2]);
    for (int s = 18; s >= 0; s -= 6) out += kAlphabet[(v >> s) & 63];
  }
  if (i + 1 == bytes.size()) {
    uint32_t v = uint8_t(bytes[i]) << 16;
    out += kAlphabet[(v >> 18) & 63];
    out += kAlphabet[(v >> 12) & 63];
    out += "==";
  } else if (i + 2 == bytes.size()) {
    uint32_t v = (uint8_t(bytes[i]) << 16) | (uint8_t(bytes[i + 1]) << 8);
    out += kAlphabet[(v >> 18) & 63];
    out += kAlphabet[(v >> 12) & 63];
    out += kAlphabet[(v >> 6) & 63];
    out += '=';
  }
  return out;
}

std::string base64_decode(const std::string& text) {
  std::string out;
  uint32_t v = 0;
  int bits = 0;
  for (char c : text) {
    const char* p = c ? std::strchr(kAlphabet, c) : nullptr;
    if (!p) continue;  // padding
    v = (v << 6) | uint32_t(p - kAlphabet);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out += char((v >> bits) & 0xff);
    }
  }
  return out;
}

int64_t etcd_int(const nlohmann::json& object, const char* field) {
  auto it = object.find(field);
  if (it == object.end() || it->is_null()) return 0;
  if (it->is_string()) return std::stoll(it->get<std::string>());
  return it->get<int64_t>();
}

struct EtcdClient::Reply {
  CURLcode code = CURLE_OK;
  long status = 0;
  std::string body;
  std::string error;
  // Streaming: messages seen so far, and whether one carried events.
  bool stream = false;
  bool event = false;
  bool failed = false;
  size_t parsed = 0;
  const std::atomic<bool>* interrupted = nullptr;
  bool connected = false;  // the member accepted the connection (it is up, if maybe leaderless)
};

namespace {

size_t on_write(char* data, size_t size, size_t n, void* user) {
  auto* r = static_cast<EtcdClient::Reply*>(user);
  r->body.append(data, size * n);
  if (!r->stream) return size * n;
  // Watch replies are JSON messages, one per line; stop at the first that carries events.
  for (size_t eol; (eol = r->body.find('\n', r->parsed)) != std::string::npos;) {
    const std::string line = r->body.substr(r->parsed, eol - r->parsed);
    r->parsed = eol + 1;
    const auto msg = nlohmann::json::parse(line, nullptr, false);
    if (msg.is_discarded()) continue;
    if (msg.contains("error")) r->failed = true;
    const auto& result = msg.contains("result") ? msg["result"] : msg;
    if (result.value("canceled", false)) r->failed = true;
    if (result.contains("events") && !result["events"].empty()) r->event = true;
    if (r->event || r->failed) return 0;  // aborts the transfer: we have what we came for
  }
  return size * n;
}

int on_progress(void* user, curl_off_t, curl_off_t, curl_off_t, curl_off_t) {
  auto* r = static_cast<EtcdClient::Reply*>(user);
  return r->interrupted->load() ? 1 : 0;
}

}  // namespace

EtcdClient::EtcdClient(const EtcdOptions& options) : options_(options) {
  static std::once_flag once;
  std::call_once(once, [] { curl_global_init(CURL_GLOBAL_DEFAULT); });
  if (options_.endpoints.empty()) throw ConfigError("etcd: no endpoints given");
  curl_ = curl_easy_init();
  if (!curl_) throw StoreError("etcd: cannot create an HTTP client");
}

EtcdClient::~EtcdClient() { curl_easy_cleanup(static_cast<CURL*>(curl_)); }

std::string EtcdClient::describe() const {
  std::string s = "etcd at ";
  for (size_t i = 0; i < options_.endpoints.size(); ++i) {
    s += (i ? "," : "") + options_.endpoints[i];
  }
  return s;
}

std::string EtcdClient::url(size_t member, const std::string& path) const {
  return (options_.ca_file.empty() ? "http://" : "https://") + options_.endpoints[member] + path;
}

EtcdClient::Reply EtcdClient::perform(const std::string& url, const std::string& body,
                                      long timeout_ms, bool stream) {
  CURL* c = static_cast<CURL*>(curl_);
  curl_easy_reset(c);
  Reply r;
  r.stream = stream;
  r.interrupted = &interrupted_;
  curl_slist* headers = curl_slist_append(nullptr, "Content-Type: application/json");
  headers = curl_slist_append(headers, "Expect:");
  if (!auth_token_.empty())
    headers = curl_slist_append(headers, ("Authorization: " + auth_token_).c_str());
  char errbuf[CURL_ERROR_SIZE] = {0};
  curl_easy_setopt(c, CURLOPT_URL, url.c_str());
  curl_easy_setopt(c, CURLOPT_POST, 1L);
  curl_easy_setopt(c, CURLOPT_POSTFIELDS, body.c_str());
  curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, static_cast<curl_off_t>(body.size()));
  curl_easy_setopt(c, CURLOPT_HTTPHEADER, headers);
  curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_write);
  curl_easy_setopt(c, CURLOPT_WRITEDATA, &r);
  curl_easy_setopt(c, CURLOPT_XFERINFOFUNCTION, on_progress);
  curl_easy_setopt(c, CURLOPT_XFERINFODATA, &r);
  curl_easy_setopt(c, CURLOPT_NOPROGRESS, 0L);
  curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, std::max(1L, timeout_ms));
  curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, std::min(kConnectMs, std::max(1L, timeout_ms)));
  curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(c, CURLOPT_ERRORBUFFER, errbuf);
  curl_easy_setopt(c, CURLOPT_TCP_NODELAY, 1L);
  if (!options_.ca_file.empty()) curl_easy_setopt(c, CURLOPT_CAINFO, options_.ca_file.c_str());
  if (!options_.cert_file.empty()) {
    curl_easy_setopt(c, CURLOPT_SSLCERT, options_.cert_file.c_str());
  }
  if (!options_.key_file.empty()) curl_easy_setopt(c, CURLOPT_SSLKEY, options_.key_file.c_str());
  r.code = curl_easy_perform(c);
  curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &r.status);
  long sent = 0;  // request bytes sent: a connection was made (new or reused)
  r.connected = r.status > 0 ||
                (curl_easy_getinfo(c, CURLINFO_REQUEST_SIZE, &sent) == CURLE_OK && sent > 0);
  char* ip = nullptr;
  if (curl_easy_getinfo(c, CURLINFO_LOCAL_IP, &ip) == CURLE_OK && ip && *ip) local_address_ = ip;
  r.error = errbuf[0] ? errbuf : curl_easy_strerror(r.code);
  curl_slist_free_all(headers);
  return r;
}

void EtcdClient::authenticate(Clock::time_point deadline) {
  auth_token_.clear();
  const nlohmann::json body = {{"name", options_.user}, {"password", options_.password}};
  auto reply = post("/v3/auth/authenticate", body, deadline);
  auth_token_ = reply.value("token", std::string());
  if (auth_token_.empty()) {
    throw StoreError(describe() + " did not give user '" + options_.user + "' a token");
  }
}

nlohmann::json EtcdClient::post(const std::string& path, const nlohmann::json& body,
                                Clock::time_point deadline) {
  WaitMark waiting;  // on etcd, not on this thread's work (the hang watch)
  const bool auth_call = path == "/v3/auth/authenticate";
  if (!auth_call && !options_.user.empty() && auth_token_.empty()) authenticate(deadline);
  const std::string text = body.dump();
  std::string last = "no member tried";
  bool reauthenticated = false;
  const auto start = Clock::now();
  const auto own_deadline = deadline;
  const auto election_end = start + options_.election_timeout * options_.election_rounds;
  const size_t members = options_.endpoints.size();
  // Members that accepted a connection in the current round and in the last whole one.
  std::vector<bool> up(members, false);
  size_t up_last_round = 0;
  auto count = [](const std::vector<bool>& v) {
    return static_cast<size_t>(std::count(v.begin(), v.end(), true));
  };
  auto quorum_lost = [&](size_t up_now) {
    throw StoreError("no member of " + describe() + " answered " + path + " in time (" + last +
                     "; " + std::to_string(up_now) + " of " + std::to_string(members) +
                     " members up); the cluster may have lost its quorum");
  };
  for (int round = 0;; ++round) {
    // Each member once a round; a member asked again (a fresh token) does not count as tried.
    for (size_t tried = 0; tried < members; ++tried) {
      if (interrupted_) throw StoreError(describe() + ": client interrupted");
      if (Clock::now() >= deadline) {
        // Before a whole round nothing is known; a majority up but no answer is an election in
        // progress (quorum not lost), which can take some election timeouts to finish.
        const size_t up_now = std::max(up_last_round, count(up));
        if ((round == 0 || 2 * up_now > members) && Clock::now() < election_end) {
          deadline = election_end;
        } else if (2 * up_now > members) {
          const auto spent =
              std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - start);
          throw StoreError(describe() + ": " + std::to_string(up_now) + " of its " +
                           std::to_string(members) + " members are up but none served " + path +
                           " within " + std::to_string(spent.count()) + " ms (" + last +
                           "); its leader election has not finished");
        } else {
          quorum_lost(up_now);
        }
      }
      const auto left =
          std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
      const size_t m = member_;
      // The first round moves on quickly from a silent member; later rounds, when every member
      // was slow or leaderless, give each a fair share of what is left.
      const auto attempt =
          round == 0 ? kAttempt
                     : std::max(kAttempt, left / static_cast<int64_t>(members));
      Reply r = perform(url(m, path), text, std::min(left, attempt).count(), false);
      if (r.connected) up[m] = true;
      if (r.code == CURLE_ABORTED_BY_CALLBACK)
        throw StoreError(describe() + ": client interrupted");
      if (tls_refusal(r.code, r.error)) {
        throw StoreError(describe() + " refused the TLS connection (" + options_.endpoints[m] +
                         ": " + r.error + ")");
      }
      if (r.code != CURLE_OK) {
        last = options_.endpoints[m] + ": " + r.error;
        member_ = (m + 1) % options_.endpoints.size();
        continue;
      }
      auto reply = nlohmann::json::parse(r.body, nullptr, false);
      if (reply.is_discarded() || !reply.is_object()) {
        throw StoreError(options_.endpoints[m] + " is not an etcd v3 gateway (HTTP " +
                         std::to_string(r.status) + " to " + path + ")");
      }
      if (r.status == 200 && !reply.contains("error")) return reply;
      const std::string message = reply.value("message", reply.value("error", std::string()));
      if (transient(reply)) {
        last = options_.endpoints[m] + ": " + message;
        member_ = (m + 1) % options_.endpoints.size();
        continue;
      }
      if (!auth_call && !options_.user.empty() && !reauthenticated &&
          message.find("invalid auth token") != std::string::npos) {
        reauthenticated = true;  // tokens expire; get a new one once
        authenticate(deadline);
        --tried;  // the same member again, with the new token (unsigned wrap: ++ restores it)
        continue;
      }
      if (auth_call) {
        throw StoreError(describe() + " refused user '" + options_.user + "': " + message);
      }
      throw StoreError(describe() + " refused " + path + ": " + message);
    }
    up_last_round = count(up);
    std::fill(up.begin(), up.end(), false);
    // Past the call's own deadline, a whole round with fewer than a majority up: quorum lost.
    if (Clock::now() >= own_deadline && 2 * up_last_round <= members) quorum_lost(up_last_round);
    const auto pause = std::chrono::milliseconds(std::min(50 * (round + 1), 500));
    if (Clock::now() + pause < deadline) std::this_thread::sleep_for(pause);
  }
}

bool EtcdClient::watch(const std::vector<nlohmann::json>& requests, Clock::time_point until) {
  if (!options_.user.empty() && auth_token_.empty()) authenticate(until);
  std::string text;
  for (const auto& r : requests) text += r.dump();
  const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(until - Clock::now());
  if (left.count() <= 0) return false;
  const size_t m = member_;
  Reply r = perform(url(m, "/v3/watch"), text, left.count(), true);
  if (r.event) return true;
  if (interrupted_) throw StoreError(describe() + ": client interrupted");
  // A timeout is the normal end of a quiet watch; anything else moves to the next member.
  if (r.code != CURLE_OPERATION_TIMEDOUT) member_ = (m + 1) % options_.endpoints.size();
  if (r.failed && r.body.find("invalid auth token") != std::string::npos) auth_token_.clear();
  return false;
}

}  // namespace tenax::detail
