#include "tenax/health/replica_hash.h"

#include <cstring>
#include <map>

namespace tenax {
namespace {

uint64_t mix(uint64_t h, uint64_t v) {
  h ^= v + 0x9E3779B97F4A7C15ull + (h << 6) + (h >> 2);
  return h * 0xff51afd7ed558ccdull;
}

uint64_t mix_string(uint64_t h, const std::string& s) {
  for (unsigned char c : s) h = mix(h, c);
  return h;
}

}  // namespace

uint64_t state_signature(const StateDict& state) {
  uint64_t h = 1;
  for (const auto& t : state.tensors()) {
    h = mix_string(h, t.name);
    for (int64_t d : t.global_shape) h = mix(h, static_cast<uint64_t>(d));
    for (int64_t o : t.offsets) h = mix(h, static_cast<uint64_t>(o));
    h = mix(h, static_cast<uint64_t>(t.tensor.numel()));
  }
  return h;
}

uint64_t state_hash(const StateDict& state) {
  uint64_t h = 7;
  for (const auto& t : state.tensors()) {
    const at::Tensor c = t.tensor.is_contiguous() ? t.tensor : t.tensor.contiguous();
    const auto* p = static_cast<const unsigned char*>(c.data_ptr());
    const size_t n = static_cast<size_t>(c.numel()) * c.element_size();
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
      uint64_t w;
      std::memcpy(&w, p + i, 8);
      h = (h ^ w) * 0x100000001b3ull + (h >> 29);
    }
    for (; i < n; ++i) h = (h ^ p[i]) * 0x100000001b3ull;
  }
  return h;
}

std::vector<int> replicas_that_differ(const std::vector<uint64_t>& signatures,
                                      const std::vector<uint64_t>& hashes) {
  std::map<uint64_t, std::vector<int>> groups;
  for (size_t r = 0; r < signatures.size(); ++r)
    groups[signatures[r]].push_back(static_cast<int>(r));
  std::vector<int> out;
  for (const auto& [sig, ranks] : groups) {
    if (ranks.size() < 3) continue;
    std::map<uint64_t, int> votes;
    for (int r : ranks) ++votes[hashes[r]];
    for (const auto& [h, n] : votes) {
      if (2 * n <= static_cast<int>(ranks.size())) continue;
      for (int r : ranks) {
        if (hashes[r] != h) out.push_back(r);
      }
    }
  }
  return out;
}

}  // namespace tenax
