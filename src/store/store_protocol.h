#pragma once

// The TcpStore wire protocol. Each message is a frame: u32 length, then the body. A request
// body starts with one Op byte followed by its arguments; a reply body starts with one Status
// byte. Strings are u32 length + bytes, integers are i64, all little-endian. Internal.

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "tenax/core/error.h"

namespace tenax::detail::store_wire {

enum class Op : uint8_t {
  kHello = 1,         // token                      -> kOk | kError(msg)
  kSet = 2,           // key, value                 -> kOk
  kGet = 3,           // key, wait_ms               -> kOk(value) | kAbsent | kTimeout
  kAdd = 4,           // key, delta                 -> kOk(i64)
  kCompareSet = 5,    // key, expected, desired     -> kOk(value)
  kDelete = 6,        // key                        -> kOk(i64 existed)
  kList = 7,          // prefix                     -> kOk(i64 n, n keys)
  kWait = 8,          // i64 n, n keys, wait_ms     -> kOk | kTimeout(i64 n, missing keys)
  kOnDisconnect = 9,  // key, value                 -> kOk
  kBye = 10,          //                            -> kOk
  kWaitAny = 11,      // i64 n, n keys, wait_ms     -> kOk(i64 index, value) | kTimeout
};

enum class Status : uint8_t { kOk = 0, kAbsent = 1, kTimeout = 2, kError = 3 };

class Encoder {
 public:
  Encoder& u8(uint8_t v) { buf_.push_back(static_cast<char>(v)); return *this; }
  Encoder& i64(int64_t v) { buf_.append(reinterpret_cast<const char*>(&v), sizeof(v)); return *this; }
  Encoder& str(const std::string& s) {
    uint32_t n = static_cast<uint32_t>(s.size());
    buf_.append(reinterpret_cast<const char*>(&n), sizeof(n));
    buf_ += s;
    return *this;
  }
  const std::string& bytes() const { return buf_; }

 private:
  std::string buf_;
};

class Decoder {
 public:
  // Owns a copy of its bytes, so decoding a temporary reply is safe. (A vector, not the string
  // itself: GCC 12 takes a moved-from short string's inline buffer for uninitialized.)
  explicit Decoder(const std::string& s) : bytes_(s.begin(), s.end()) {}
  Decoder(const Decoder&) = delete;
  uint8_t u8() {
    need(1);
    return static_cast<uint8_t>(bytes_[pos_++]);
  }
  int64_t i64() {
    int64_t v;
    need(sizeof(v));
    std::memcpy(&v, bytes_.data() + pos_, sizeof(v));
    pos_ += sizeof(v);
    return v;
  }
  std::string str() {
    uint32_t n;
    need(sizeof(n));
    std::memcpy(&n, bytes_.data() + pos_, sizeof(n));
    pos_ += sizeof(n);
    need(n);
    std::string s(bytes_.data() + pos_, n);
    pos_ += n;
    return s;
  }

 private:
  void need(size_t n) const {
    if (bytes_.size() - pos_ < n) throw StoreError("malformed store message");
  }
  std::vector<char> bytes_;
  size_t pos_ = 0;
};

}  // namespace tenax::detail::store_wire
