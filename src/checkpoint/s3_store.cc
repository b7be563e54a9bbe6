// The durable tier on S3 (or any S3-compatible endpoint) through libcurl, which signs every
// request with AWS Signature Version 4 (CURLOPT_AWS_SIGV4). Path-style addressing
// (endpoint/bucket/key). Objects above one part go up as a multipart upload with several parts
// in flight; every request is retried with exponential backoff and jitter on connection
// errors, 5xx and throttling (429, 503 SlowDown).

#include <curl/curl.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <mutex>
#include <random>
#include <sstream>
#include <thread>

#include "checkpoint/engine_metrics.h"
#include "checkpoint/object_store.h"
#include "checkpoint/parallel_for.h"
#include "tenax/core/error.h"
#include "tenax/core/logging.h"

namespace tenax::detail {
namespace {

S3Options resolve(S3Options o) {
  if (o.region.empty()) o.region = "us-east-1";
  if (o.endpoint.empty()) o.endpoint = "https://s3." + o.region + ".amazonaws.com";
  while (!o.endpoint.empty() && o.endpoint.back() == '/') o.endpoint.pop_back();
  if (o.injected_failures < 0) o.injected_failures = 0;
  if (o.access_key.empty() || o.secret_key.empty()) {
    throw CheckpointError("durable tier s3: no credentials (S3Options::access_key and secret_key; "
                          "S3Options::from_environment reads AWS_ACCESS_KEY_ID and "
                          "AWS_SECRET_ACCESS_KEY, or ~/.aws/credentials)");
  }
  if (o.part_bytes < (5 << 20)) o.part_bytes = 5 << 20;  // S3's minimum part size
  if (o.parallel_parts < 1) o.parallel_parts = 1;
  if (o.max_attempts < 1) o.max_attempts = 1;
  return o;
}

std::string between(const std::string& s, const std::string& open, const std::string& close,
                    size_t from = 0, size_t* end = nullptr) {
  const size_t a = s.find(open, from);
  if (a == std::string::npos) return "";
  const size_t b = s.find(close, a + open.size());
  if (b == std::string::npos) return "";
  if (end) *end = b + close.size();
  return s.substr(a + open.size(), b - a - open.size());
}

std::string uri_encode(const std::string& s, bool keep_slash) {
  static const char* hex = "0123456789ABCDEF";
  std::string out;
  for (unsigned char c : s) {
    if (isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~' || (keep_slash && c == '/')) {
      out += static_cast<char>(c);
    } else {
      out += '%';
      out += hex[c >> 4];
      out += hex[c & 15];
    }
  }
  return out;
}

struct Response {
  long status = 0;
  std::string body, etag;
  CURLcode curl = CURLE_OK;
  std::string curl_error;
};

struct Upload {
  const char* data;
  size_t size, at;
};

size_t on_write(char* p, size_t size, size_t n, void* user) {
  static_cast<std::string*>(user)->append(p, size * n);
  return size * n;
}

size_t on_read(char* p, size_t size, size_t n, void* user) {
  auto* u = static_cast<Upload*>(user);
  const size_t k = std::min(size * n, u->size - u->at);
  std::memcpy(p, u->data + u->at, k);
  u->at += k;
  return k;
}

size_t on_header(char* p, size_t size, size_t n, void* user) {
  std::string h(p, size * n);
  std::string lower = h;
  std::transform(lower.begin(), lower.end(), lower.begin(), ::tolower);
  if (lower.rfind("etag:", 0) == 0) {
    std::string v = h.substr(5);
    v.erase(0, v.find_first_not_of(" \t"));
    v.erase(v.find_last_not_of(" \t\r\n") + 1);
    *static_cast<std::string*>(user) = v;
  }
  return size * n;
}

class S3Store : public ObjectStore {
 public:
  S3Store(std::string bucket, std::string prefix, const S3Options& o)
      : bucket_(std::move(bucket)), prefix_(std::move(prefix)), o_(resolve(o)),
        injected_left_(o_.injected_failures) {
    static std::once_flag once;
    std::call_once(once, [] { curl_global_init(CURL_GLOBAL_DEFAULT); });
  }

  std::string describe() const override { return "s3://" + bucket_ + "/" + prefix_; }

  void check() override {
    // An (empty) listing under our prefix: needs the bucket, valid credentials and the list
    // permission that restore needs.
    Response r = request("GET", "",
                         "list-type=2&max-keys=1&prefix=" + uri_encode(prefix_ + ".check/", false),
                         nullptr, 0, "");
    if (r.status == 200) return;
    if (r.curl != CURLE_OK) {
      throw CheckpointError("durable tier " + describe() + ": cannot reach " + o_.endpoint +
                            ": " + r.curl_error);
    }
    const std::string code = between(r.body, "<Code>", "</Code>");
    if (r.status == 404 || code == "NoSuchBucket") {
      throw CheckpointError("durable tier " + describe() + ": bucket '" + bucket_ +
                            "' does not exist at " + o_.endpoint);
    }
    if (r.status == 403 || r.status == 401) {
      throw CheckpointError("durable tier " + describe() + ": access denied (" +
                            (code.empty() ? "HTTP " + std::to_string(r.status) : code) +
                            "): check the credentials of key id '" + o_.access_key + "'");
    }
    throw CheckpointError("durable tier " + describe() + ": listing the bucket gave " +
                          describe_failure(r));
  }

  void put(const std::string& key, const char* data, size_t n) override {
    if (static_cast<int64_t>(n) <= o_.part_bytes) {
      expect_ok(request("PUT", key, "", data, n, ""), "PUT", key);
      return;
    }
    put_multipart(key, data, n);
  }

  std::string get(const std::string& key) override {
    Response r = request("GET", key, "", nullptr, 0, "");
    expect_ok(r, "GET", key);
    return std::move(r.body);
  }

  std::string get_range(const std::string& key, int64_t offset, int64_t n) override {
    if (n == 0) return "";
    Response r = request("GET", key, "", nullptr, 0,
                         "Range: bytes=" + std::to_string(offset) + "-" +
                             std::to_string(offset + n - 1));
    expect_ok(r, "GET", key);
    if (static_cast<int64_t>(r.body.size()) != n) {
      throw CheckpointError("durable tier " + describe() + ": object " + key +
                            " is truncated (asked for " + std::to_string(n) + " bytes at " +
                            std::to_string(offset) + ", got " + std::to_string(r.body.size()) +
                            ")");
    }
    return std::move(r.body);
  }

  std::vector<std::string> list(const std::string& prefix) override {
    std::vector<std::string> keys;
    std::string token;
    for (;;) {
      std::string q = "list-type=2&prefix=" + uri_encode(prefix_ + prefix, false);
      if (!token.empty()) q = "continuation-token=" + uri_encode(token, false) + "&" + q;
      Response r = request("GET", "", q, nullptr, 0, "");
      expect_ok(r, "LIST", prefix);
      size_t at = 0, end = 0;
      for (;;) {
        std::string k = between(r.body, "<Key>", "</Key>", at, &end);
        if (k.empty()) break;
        keys.push_back(k.substr(prefix_.size()));
        at = end;
      }
      if (between(r.body, "<IsTruncated>", "</IsTruncated>") != "true") break;
      token = between(r.body, "<NextContinuationToken>", "</NextContinuationToken>");
      if (token.empty()) break;
    }
    std::sort(keys.begin(), keys.end());
    return keys;
  }

  void remove(const std::string& key) override {
    Response r = request("DELETE", key, "", nullptr, 0, "");
    if (r.status != 204 && r.status != 200 && r.status != 404) expect_ok(r, "DELETE", key);
  }

 private:
  void put_multipart(const std::string& key, const char* data, size_t n) {
    Response init = request("POST", key, "uploads=", nullptr, 0, "");
    expect_ok(init, "CreateMultipartUpload", key);
    const std::string id = between(init.body, "<UploadId>", "</UploadId>");
    if (id.empty()) throw CheckpointError("durable tier " + describe() + ": no UploadId for " + key);
    const size_t part = static_cast<size_t>(o_.part_bytes);
    const int parts = static_cast<int>((n + part - 1) / part);
    std::vector<std::string> etags(parts);
    try {
      parallel_for(static_cast<size_t>(parts), static_cast<size_t>(o_.parallel_parts),
                   [&](size_t i) {
                     const size_t off = i * part, len = std::min(part, n - off);
                     Response r = request("PUT", key,
                                          "partNumber=" + std::to_string(i + 1) +
                                              "&uploadId=" + uri_encode(id, false),
                                          data + off, len, "");
                     if (r.status != 200 || r.etag.empty()) {
                       throw CheckpointError("part " + std::to_string(i + 1) + ": " +
                                             describe_failure(r));
                     }
                     etags[i] = r.etag;
                   });
    } catch (const CheckpointError& e) {
      request("DELETE", key, "uploadId=" + uri_encode(id, false), nullptr, 0, "");
      throw CheckpointError("durable tier " + describe() + ": multipart upload of " + key +
                            " failed: " + e.what());
    }
    std::string xml = "<CompleteMultipartUpload>";
    for (int i = 0; i < parts; ++i) {
      xml += "<Part><PartNumber>" + std::to_string(i + 1) + "</PartNumber><ETag>" + etags[i] +
             "</ETag></Part>";
    }
    xml += "</CompleteMultipartUpload>";
    Response done = request("POST", key, "uploadId=" + uri_encode(id, false), xml.data(), xml.size(), "");
    if (done.status != 200 || done.body.find("<Error>") != std::string::npos) {
      request("DELETE", key, "uploadId=" + uri_encode(id, false), nullptr, 0, "");
      Response failed = done;
      if (failed.status == 200) failed.status = 500;  // S3 reports some failures in a 200 body
      expect_ok(failed, "CompleteMultipartUpload", key);
    }
  }

  static bool retryable(const Response& r) {
    return r.curl != CURLE_OK || r.status >= 500 || r.status == 429;
  }

  std::string describe_failure(const Response& r) const {
    if (r.curl != CURLE_OK) return "connection to " + o_.endpoint + " failed: " + r.curl_error;
    std::string code = between(r.body, "<Code>", "</Code>");
    return "HTTP " + std::to_string(r.status) + (code.empty() ? "" : " " + code);
  }

  void expect_ok(const Response& r, const char* op, const std::string& key) const {
    if (r.status >= 200 && r.status < 300 && r.curl == CURLE_OK) return;
    if (r.status == 404 && r.curl == CURLE_OK) {
      throw CheckpointError("durable tier " + describe() + ": no object " + key + " (" + op + ")");
    }
    throw CheckpointError("durable tier " + describe() + ": " + op + " " + key + ": " +
                          describe_failure(r));
  }

  // `query` with its parameters in the order SigV4's canonical request puts them (by name):
  // libcurl 7.x signs the query as it is written, and S3 checks it sorted.
  static std::string sorted_query(const std::string& query) {
    std::vector<std::string> params;
    for (size_t at = 0; at <= query.size();) {
      size_t end = query.find('&', at);
      if (end == std::string::npos) end = query.size();
      params.push_back(query.substr(at, end - at));
      at = end + 1;
    }
    std::sort(params.begin(), params.end());
    std::string out;
    for (const auto& p : params) out += (out.empty() ? "" : "&") + p;
    return out;
  }

  // One request, retried with exponential backoff and jitter while it fails retryably.
  Response request(const std::string& method, const std::string& key, const std::string& query,
                   const char* body, size_t n, const std::string& header) {
    std::mt19937 rng(std::random_device{}());
    std::chrono::milliseconds delay = o_.backoff;
    Response r;
    for (int attempt = 1;; ++attempt) {
      r = request_once(method, key, query, body, n, header);
      if (!retryable(r) || attempt >= o_.max_attempts) return r;
      detail::checkpoint_metrics().retries->inc();
      const auto jitter = std::chrono::milliseconds(
          std::uniform_int_distribution<int64_t>(0, delay.count() / 2)(rng));
      log(LogLevel::kDebug, "s3: " + method + " " + key + ": " + describe_failure(r) +
                                "; attempt " + std::to_string(attempt + 1) + " in " +
                                std::to_string((delay + jitter).count()) + " ms");
      std::this_thread::sleep_for(delay + jitter);
      delay = std::min<std::chrono::milliseconds>(delay * 2, std::chrono::seconds(20));
    }
  }

  Response request_once(const std::string& method, const std::string& key,
                        const std::string& query, const char* body, size_t n,
                        const std::string& header) {
    Response r;
    if (method == "PUT" && take_injected_failure()) {  // S3Options::injected_failures
      r.status = 503;
      r.body = "<Error><Code>SlowDown</Code><Message>injected by TENAX_FAULT</Message></Error>";
      return r;
    }
    CURL* c = curl_easy_init();
    std::string url = o_.endpoint + "/" + bucket_;
    if (!key.empty()) url += "/" + uri_encode(prefix_ + key, true);
    if (!query.empty()) url += "?" + sorted_query(query);
    curl_easy_setopt(c, CURLOPT_URL, url.c_str());
    const std::string sigv4 = "aws:amz:" + o_.region + ":s3";
    curl_easy_setopt(c, CURLOPT_AWS_SIGV4, sigv4.c_str());
    const std::string userpwd = o_.access_key + ":" + o_.secret_key;
    curl_easy_setopt(c, CURLOPT_USERPWD, userpwd.c_str());
    curl_slist* headers = nullptr;
    if (!header.empty()) headers = curl_slist_append(headers, header.c_str());
    if (!o_.session_token.empty()) {
      headers = curl_slist_append(headers, ("x-amz-security-token: " + o_.session_token).c_str());
    }
    // The payload is not part of the signature (S3's UNSIGNED-PAYLOAD); every part carries
    // its own CRC-32C in the manifest, checked on read.
    headers = curl_slist_append(headers, "x-amz-content-sha256: UNSIGNED-PAYLOAD");
    // A POST's body is XML (CompleteMultipartUpload), not the form libcurl would declare.
    if (method == "POST") headers = curl_slist_append(headers, "Content-Type: application/xml");
    Upload up{body, n, 0};
    if (method == "PUT") {
      curl_easy_setopt(c, CURLOPT_UPLOAD, 1L);
      curl_easy_setopt(c, CURLOPT_READFUNCTION, on_read);
      curl_easy_setopt(c, CURLOPT_READDATA, &up);
      curl_easy_setopt(c, CURLOPT_INFILESIZE_LARGE, static_cast<curl_off_t>(n));
    } else if (method == "POST") {
      curl_easy_setopt(c, CURLOPT_POST, 1L);
      curl_easy_setopt(c, CURLOPT_POSTFIELDS, body ? body : "");
      curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, static_cast<curl_off_t>(n));
    } else if (method == "HEAD") {
      curl_easy_setopt(c, CURLOPT_NOBODY, 1L);
    } else if (method != "GET") {
      curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method.c_str());
    }
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, headers);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_write);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &r.body);
    curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(c, CURLOPT_HEADERDATA, &r.etag);
    curl_easy_setopt(c, CURLOPT_TIMEOUT, static_cast<long>(o_.request_timeout.count()));
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT, 10L);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    // No 100-continue round trip before a large body. (Not by an empty "Expect:" header: libcurl
    // 7.x signs it as a header with an empty value while leaving it out of the request.)
    curl_easy_setopt(c, CURLOPT_EXPECT_100_TIMEOUT_MS, 0L);
    char err[CURL_ERROR_SIZE] = {0};
    curl_easy_setopt(c, CURLOPT_ERRORBUFFER, err);
    r.curl = curl_easy_perform(c);
    if (r.curl != CURLE_OK) r.curl_error = err[0] ? err : curl_easy_strerror(r.curl);
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &r.status);
    curl_slist_free_all(headers);
    curl_easy_cleanup(c);
    return r;
  }

  // True (and one fewer left) while injected failures remain. Any upload thread.
  bool take_injected_failure() {
    int64_t left = injected_left_.load();
    while (left > 0) {
      if (injected_left_.compare_exchange_weak(left, left - 1)) return true;
    }
    return false;
  }

  std::string bucket_, prefix_;
  S3Options o_;
  std::atomic<int64_t> injected_left_;  // S3Options::injected_failures not yet answered
};

}  // namespace

std::unique_ptr<ObjectStore> open_s3_store(const std::string& bucket, const std::string& prefix,
                                           const S3Options& s3) {
  return std::make_unique<S3Store>(bucket, prefix, s3);
}

}  // namespace tenax::detail
