#include "checkpoint/snapshot.h"

#include <ATen/ops/from_blob.h>

#include <algorithm>
#include <cstring>

#include "checkpoint/crc32c.h"
#include "checkpoint/parallel_for.h"
#include "tenax/core/error.h"

namespace tenax::detail {
namespace {

int64_t align64(int64_t n) { return (n + 63) & ~int64_t(63); }

}  // namespace

std::string dtype_name(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat: return "F32";
    case at::kDouble: return "F64";
    case at::kHalf: return "F16";
    case at::kBFloat16: return "BF16";
    case at::kInt: return "I32";
    case at::kLong: return "I64";
    case at::kByte: return "U8";
    case at::kChar: return "I8";
    case at::kShort: return "I16";
    case at::kBool: return "BOOL";
    default: break;
  }
  throw ConfigError(std::string("checkpoint: unsupported dtype ") + toString(t.scalar_type()));
}

size_t dtype_size(const std::string& n) {
  if (n == "F64" || n == "I64") return 8;
  if (n == "F32" || n == "I32") return 4;
  if (n == "F16" || n == "BF16" || n == "I16") return 2;
  if (n == "U8" || n == "I8" || n == "BOOL") return 1;
  throw CheckpointError("checkpoint: unknown dtype '" + n + "'");
}

Layout plan(const StateDict& state) {
  Layout l;
  int64_t at = 0;
  for (const auto& t : state.tensors()) {
    ShardRecord s;
    s.name = t.name;
    s.dtype = dtype_name(t.tensor);
    s.global_shape = t.global_shape;
    s.offsets = t.offsets;
    s.sizes = t.tensor.sizes().vec();
    s.offset = at;
    s.nbytes = t.tensor.numel() * t.tensor.element_size();
    at = align64(at + s.nbytes);
    l.shards.push_back(std::move(s));
  }
  for (const auto& [name, bytes] : state.blobs()) {
    BlobRecord b;
    b.name = name;
    b.offset = at;
    b.nbytes = static_cast<int64_t>(bytes.size());
    at = align64(at + b.nbytes);
    l.blobs.push_back(std::move(b));
  }
  l.ints = state.ints();
  l.data_bytes = at;
  return l;
}

bool same_parts(const Layout& layout, const StateDict& state) {
  if (layout.shards.size() != state.tensors().size()) return false;
  for (size_t i = 0; i < layout.shards.size(); ++i) {
    const auto& s = layout.shards[i];
    const auto& t = state.tensors()[i];
    if (s.name != t.name || s.dtype != dtype_name(t.tensor) || s.global_shape != t.global_shape ||
        s.offsets != t.offsets || s.sizes != t.tensor.sizes().vec()) {
      return false;
    }
  }
  return true;
}

namespace {

// Large parts are cut into 8 MiB pieces spread over a few threads: one core does not
// saturate memory bandwidth.
struct Piece {
  const char* src;
  char* dst;
  size_t n;
};

void add_pieces(std::vector<Piece>& pieces, const char* from, char* to, size_t n) {
  constexpr size_t kPiece = 8 << 20;
  for (size_t off = 0; off < n; off += kPiece) {
    pieces.push_back({from + off, to + off, std::min(kPiece, n - off)});
  }
}

void copy_pieces(const std::vector<Piece>& pieces) {
  parallel_for(pieces.size(), copy_threads(),
               [&](size_t k) { std::memcpy(pieces[k].dst, pieces[k].src, pieces[k].n); });
}

}  // namespace

void copy_into(const StateDict& state, const Layout& layout, char* data) {
  std::vector<at::Tensor> hold;  // contiguous copies of strided tensors
  std::vector<Piece> pieces;
  for (size_t i = 0; i < layout.shards.size(); ++i) {
    const at::Tensor& t = state.tensors()[i].tensor;
    if (!t.is_cpu()) {
      // Straight from the device into the region: one copy, not a host tensor and a memcpy.
      at::from_blob(data + layout.shards[i].offset, {t.numel()},
                    at::TensorOptions().dtype(t.dtype()))
          .copy_(t.reshape({-1}));
      continue;
    }
    at::Tensor src = t.contiguous();
    hold.push_back(src);
    add_pieces(pieces, static_cast<const char*>(src.data_ptr()), data + layout.shards[i].offset,
               static_cast<size_t>(layout.shards[i].nbytes));
  }
  copy_pieces(pieces);
  for (const auto& b : layout.blobs) {
    std::memcpy(data + b.offset, state.blobs().at(b.name).data(), b.nbytes);
  }
}

void copy_out_of(const Layout& layout, const char* data, StateDict& state) {
  std::vector<Piece> pieces;
  for (size_t i = 0; i < layout.shards.size(); ++i) {
    const at::Tensor& t = state.tensors()[i].tensor;
    const ShardRecord& s = layout.shards[i];
    if (t.is_cpu() && t.is_contiguous()) {
      add_pieces(pieces, data + s.offset, static_cast<char*>(t.data_ptr()),
                 static_cast<size_t>(s.nbytes));
    } else {
      fill_tensor(t, data + s.offset);
    }
  }
  copy_pieces(pieces);
}

std::string verify_crcs(const Layout& layout, const char* data, const std::string& where) {
  std::vector<char> good(layout.shards.size(), 1);
  parallel_for(layout.shards.size(), copy_threads(), [&](size_t k) {
    const ShardRecord& s = layout.shards[k];
    good[k] = crc32c(data + s.offset, s.nbytes) == s.crc;
  });
  std::string errors;
  for (size_t k = 0; k < good.size(); ++k) {
    if (!good[k]) {
      errors += "\n  " + where + ": shard '" + layout.shards[k].name + "' failed its checksum";
    }
  }
  for (const auto& b : layout.blobs) {
    if (crc32c(data + b.offset, b.nbytes) != b.crc) {
      errors += "\n  " + where + ": blob '" + b.name + "' failed its checksum";
    }
  }
  return errors;
}

void compute_crcs(Layout& layout, const char* data) {
  for (auto& s : layout.shards) s.crc = crc32c(data + s.offset, s.nbytes);
  for (auto& b : layout.blobs) b.crc = crc32c(data + b.offset, b.nbytes);
}

nlohmann::json to_json(const ShardRecord& s) {
  nlohmann::json j = {{"name", s.name},       {"dtype", s.dtype},   {"global_shape", s.global_shape},
                      {"offsets", s.offsets}, {"sizes", s.sizes},   {"offset", s.offset},
                      {"nbytes", s.nbytes},   {"crc32c", s.crc}};
  if (!s.file.empty()) j["file"] = s.file;
  return j;
}

nlohmann::json to_json(const BlobRecord& b) {
  nlohmann::json j = {{"name", b.name}, {"offset", b.offset}, {"nbytes", b.nbytes}, {"crc32c", b.crc}};
  if (!b.file.empty()) j["file"] = b.file;
  return j;
}

nlohmann::json to_json(const Layout& l) {
  nlohmann::json shards = nlohmann::json::array(), blobs = nlohmann::json::array();
  for (const auto& s : l.shards) shards.push_back(to_json(s));
  for (const auto& b : l.blobs) blobs.push_back(to_json(b));
  return {{"format", "tenax-snapshot-1"}, {"run", l.run},       {"step", l.step},
          {"rank", l.rank},               {"world", l.world},   {"ints", l.ints},
          {"data_bytes", l.data_bytes},   {"tensors", shards},  {"blobs", blobs},
          {"member", l.member},           {"generation", l.generation}};
}

ShardRecord shard_from_json(const nlohmann::json& j) {
  ShardRecord s;
  s.name = j.at("name").get<std::string>();
  s.dtype = j.at("dtype").get<std::string>();
  s.global_shape = j.at("global_shape").get<std::vector<int64_t>>();
  s.offsets = j.at("offsets").get<std::vector<int64_t>>();
  s.sizes = j.at("sizes").get<std::vector<int64_t>>();
  s.offset = j.at("offset").get<int64_t>();
  s.nbytes = j.at("nbytes").get<int64_t>();
  s.crc = j.at("crc32c").get<uint32_t>();
  if (j.contains("file")) s.file = j.at("file").get<std::string>();
  return s;
}

BlobRecord blob_from_json(const nlohmann::json& j) {
  BlobRecord b;
  b.name = j.at("name").get<std::string>();
  b.offset = j.at("offset").get<int64_t>();
  b.nbytes = j.at("nbytes").get<int64_t>();
  b.crc = j.at("crc32c").get<uint32_t>();
  if (j.contains("file")) b.file = j.at("file").get<std::string>();
  return b;
}

Layout layout_from_json(const nlohmann::json& j, const std::string& what) {
  try {
    Layout l;
    l.run = j.at("run").get<std::string>();
    l.step = j.at("step").get<int64_t>();
    l.rank = j.at("rank").get<int>();
    l.world = j.at("world").get<int>();
    std::string default_member = "r";
  default_member += std::to_string(l.rank);  // not "r" + …: GCC 12 warns falsely on that
  l.member = j.value("member", default_member);
    l.generation = j.value("generation", int64_t(0));
    l.ints = j.at("ints").get<std::map<std::string, int64_t>>();
    l.data_bytes = j.at("data_bytes").get<int64_t>();
    for (const auto& s : j.at("tensors")) l.shards.push_back(shard_from_json(s));
    for (const auto& b : j.at("blobs")) l.blobs.push_back(blob_from_json(b));
    return l;
  } catch (const nlohmann::json::exception& e) {
    throw CheckpointError(what + ": malformed layout: " + e.what());
  }
}

int64_t copy_overlap(const char* src, const std::vector<int64_t>& so,
                     const std::vector<int64_t>& ss, char* dst, const std::vector<int64_t>& dof,
                     const std::vector<int64_t>& ds, size_t elem) {
  const size_t d = ss.size();
  std::vector<int64_t> lo(d), len(d);
  for (size_t i = 0; i < d; ++i) {
    lo[i] = std::max(so[i], dof[i]);
    const int64_t hi = std::min(so[i] + ss[i], dof[i] + ds[i]);
    len[i] = hi - lo[i];
    if (len[i] <= 0) return 0;
  }
  if (d == 0) {  // a scalar tensor
    std::memcpy(dst, src, elem);
    return 1;
  }
  // Row-major strides in elements.
  std::vector<int64_t> sst(d, 1), dst_st(d, 1);
  for (size_t i = d - 1; i > 0; --i) {
    sst[i - 1] = sst[i] * ss[i];
    dst_st[i - 1] = dst_st[i] * ds[i];
  }
  const int64_t row = len[d - 1];
  int64_t rows = 1;
  for (size_t i = 0; i + 1 < d; ++i) rows *= len[i];
  std::vector<int64_t> idx(d, 0);  // position inside the overlap, last dim always 0
  for (int64_t r = 0; r < rows; ++r) {
    int64_t s_off = 0, d_off = 0;
    for (size_t i = 0; i < d; ++i) {
      s_off += (lo[i] - so[i] + idx[i]) * sst[i];
      d_off += (lo[i] - dof[i] + idx[i]) * dst_st[i];
    }
    std::memcpy(dst + d_off * elem, src + s_off * elem, row * elem);
    for (size_t i = d - 1; i-- > 0;) {  // odometer over the leading dims
      if (++idx[i] < len[i]) break;
      idx[i] = 0;
    }
  }
  return rows * row;
}

at::Tensor byte_view(const char* p, int64_t n) {
  return at::from_blob(const_cast<char*>(p), {n}, at::TensorOptions().dtype(at::kByte));
}

void fill_tensor(const at::Tensor& t, const char* bytes) {
  at::Tensor host = at::from_blob(const_cast<char*>(bytes), t.sizes(),
                                  t.options().device(at::kCPU));
  t.detach().copy_(host);
}

}  // namespace tenax::detail
