#pragma once

// One rank's snapshot of a StateDict laid out in one flat buffer: every tensor part and blob at
// a 64-byte aligned offset, described by a layout (JSON in storage) that carries each part's
// name, dtype, global shape, offsets, sizes, byte range and CRC-32C.

#include <nlohmann/json.hpp>

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "tenax/checkpoint/state.h"

namespace tenax::detail {

struct ShardRecord {
  std::string name, dtype, file;  // file: the object holding it (durable tier only)
  std::vector<int64_t> global_shape, offsets, sizes;
  int64_t offset = 0, nbytes = 0;
  uint32_t crc = 0;
};

struct BlobRecord {
  std::string name, file;
  int64_t offset = 0, nbytes = 0;
  uint32_t crc = 0;
};

struct Layout {
  std::string run;
  int64_t step = -1;
  int rank = 0, world = 1;
  std::string member;      // the saving member's stable name (memory tier)
  int64_t generation = 0;  // the worker-set generation that saved it (elastic training)
  std::vector<ShardRecord> shards;
  std::vector<BlobRecord> blobs;
  std::map<std::string, int64_t> ints;
  int64_t data_bytes = 0;
};

// Offsets for every tensor and blob of `state` (CRCs zero).
Layout plan(const StateDict& state);
// True iff `layout` holds exactly the tensor parts `state` asks for (names, dtypes, global
// shapes, offsets, sizes): the snapshot can be restored without resharding.
bool same_parts(const Layout& layout, const StateDict& state);
// Copies every tensor part and blob of `state` to `data` at the planned offsets.
void copy_into(const StateDict& state, const Layout& layout, char* data);
// Fills in the CRCs from `data`.
void compute_crcs(Layout& layout, const char* data);
// Checks every part and blob in `data` against its CRC (parts over a few threads), writing
// nothing. Returns one line per mismatch ("\n  <where>: shard 'w' failed its checksum"),
// empty when all match.
std::string verify_crcs(const Layout& layout, const char* data, const std::string& where);
// The inverse of copy_into for the tensors: writes every part in `data` into the tensors of
// `state` (which holds the same parts, in order).
void copy_out_of(const Layout& layout, const char* data, StateDict& state);

nlohmann::json to_json(const ShardRecord& s);
nlohmann::json to_json(const BlobRecord& b);
nlohmann::json to_json(const Layout& layout);
ShardRecord shard_from_json(const nlohmann::json& j);
BlobRecord blob_from_json(const nlohmann::json& j);
// Throws CheckpointError naming `what` when the JSON is malformed.
Layout layout_from_json(const nlohmann::json& j, const std::string& what);

// `n` bytes at `p` as a uint8 tensor (no copy), for point-to-point transfers.
at::Tensor byte_view(const char* p, int64_t n);

// Writes `bytes` into `t` (any device, any layout) as a contiguous host buffer of its dtype.
void fill_tensor(const at::Tensor& t, const char* bytes);

std::string dtype_name(const at::Tensor& t);
size_t dtype_size(const std::string& name);

// Copies the intersection of a source part and a destination part of one global tensor
// (both contiguous row-major buffers) from `src` into `dst`. Returns the elements copied.
int64_t copy_overlap(const char* src, const std::vector<int64_t>& src_offsets,
                     const std::vector<int64_t>& src_sizes, char* dst,
                     const std::vector<int64_t>& dst_offsets,
                     const std::vector<int64_t>& dst_sizes, size_t elem);

}  // namespace tenax::detail
