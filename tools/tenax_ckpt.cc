// tenax-ckpt: inspect a run's checkpoints.
//   tenax-ckpt list   --run RUN [--durable URL]             steps per tier
//   tenax-ckpt verify --run RUN --durable URL [--step N]    checksums and completeness
//   tenax-ckpt export --run RUN --durable URL [--step N] --out FILE [--prefix model.]
//                     the step's whole tensors (parts joined) as a safetensors file
//   tenax-ckpt export --run RUN --durable URL [--step N] --format hf --out DIR
//                     the model as a directory Hugging Face's from_pretrained loads
//                     (config.json, model.safetensors), as the checkpoint's "export.hf" blob
//                     describes it (llama_train records one)
// URL: a directory, file:///dir or s3://bucket/prefix (S3 settings from the AWS environment).
// Without --step, the newest committed step. Exit status: 0 ok, 1 a check failed, 2 bad usage.

#include <dirent.h>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <numeric>
#include <string>
#include <vector>

#include "checkpoint/crc32c.h"
#include "checkpoint/durable_layout.h"
#include "checkpoint/memory_tier.h"
#include "checkpoint/object_store.h"
#include "checkpoint/snapshot.h"
#include "tenax/core/error.h"

namespace {

using namespace tenax;
// tenax's, not the `detail` LibTorch 2.15 declares at global scope.
namespace detail = tenax::detail;
using nlohmann::json;
using detail::durable_steps;
using detail::step_dir;

struct Args {
  std::string command, run, durable, out, prefix, format = "safetensors";
  int64_t step = -1;
};

int usage() {
  std::fprintf(stderr,
               "usage: tenax-ckpt list   --run RUN [--durable URL]\n"
               "       tenax-ckpt verify --run RUN --durable URL [--step N]\n"
               "       tenax-ckpt export --run RUN --durable URL [--step N] --out FILE "
               "[--prefix P]\n"
               "       tenax-ckpt export --run RUN --durable URL [--step N] --format hf --out DIR\n");
  return 2;
}

int64_t count(const std::vector<int64_t>& shape) {
  return std::accumulate(shape.begin(), shape.end(), int64_t(1), std::multiplies<int64_t>());
}

int list(const Args& a) {
  std::printf("run %s\nmemory tier (this host):\n", a.run.c_str());
  const std::string head = "tenax-" + a.run + "-r";
  std::vector<std::string> names;
  if (DIR* d = ::opendir("/dev/shm")) {
    while (dirent* e = ::readdir(d)) {
      if (std::string(e->d_name).rfind(head, 0) == 0) names.push_back(e->d_name);
    }
    ::closedir(d);
  }
  std::sort(names.begin(), names.end());
  for (const auto& n : names) {
    auto r = detail::Region::open("/" + n);
    if (!r) continue;
    const auto* h = r->header();
    const uint32_t state = h->state.load();
    std::printf("  %-40s step %lld, %llu bytes, %s\n", n.c_str(), static_cast<long long>(h->step),
                static_cast<unsigned long long>(h->data_bytes),
                state == detail::Region::kCommitted ? "committed"
                : state == detail::Region::kWriting ? "incomplete (being written or cut)"
                                                    : "empty");
  }
  if (names.empty()) std::printf("  none\n");
  if (!a.durable.empty()) {
    auto store = detail::open_object_store(a.durable, S3Options::from_environment());
    std::printf("durable tier (%s):\n", store->describe().c_str());
    auto steps = durable_steps(*store, a.run);
    for (int64_t s : steps) {
      json m = json::parse(store->get(step_dir(a.run, s) + "/manifest.json"));
      int64_t bytes = 0;
      for (const auto& t : m["tensors"]) bytes += t["nbytes"].get<int64_t>();
      std::printf("  step %lld: world %d, %zu tensor parts, %lld bytes\n",
                  static_cast<long long>(s), m["world"].get<int>(), m["tensors"].size(),
                  static_cast<long long>(bytes));
    }
    if (steps.empty()) std::printf("  none\n");
  }
  return 0;
}

// The manifest of `a.step` (or the newest).
json manifest(detail::ObjectStore& store, const Args& a, int64_t& step) {
  step = a.step;
  if (step < 0) {
    auto steps = durable_steps(store, a.run);
    if (steps.empty()) throw CheckpointError("no committed step of run '" + a.run + "' in " + store.describe());
    step = steps.front();
  }
  json m = json::parse(store.get(step_dir(a.run, step) + "/manifest.json"));
  if (m.value("run", "") != a.run) {
    throw CheckpointError("manifest of step " + std::to_string(step) + " belongs to run '" +
                          m.value("run", "") + "'");
  }
  return m;
}

// The durable tier of `a` and its step's manifest and directory.
struct OpenStep {
  std::unique_ptr<detail::ObjectStore> store;
  int64_t step = -1;
  json manifest;
  std::string dir;
};

OpenStep open_step(const Args& a) {
  OpenStep o;
  o.store = detail::open_object_store(a.durable, S3Options::from_environment());
  o.manifest = manifest(*o.store, a, o.step);
  o.dir = step_dir(a.run, o.step);
  return o;
}

int verify(const Args& a) {
  const auto [store, step, m, dir] = open_step(a);
  std::map<std::string, std::pair<std::vector<int64_t>, int64_t>> covered;  // shape, elements
  int bad = 0;
  int64_t bytes = 0;
  for (const auto& tj : m["tensors"]) {
    auto s = detail::shard_from_json(tj);
    try {
      detail::read_part(*store, dir, s);
      bytes += s.nbytes;
    } catch (const Error& e) {
      std::printf("BAD  %s\n", e.what());
      ++bad;
    }
    auto& c = covered[s.name];
    c.first = s.global_shape;
    c.second += count(s.sizes);
  }
  for (const auto& [name, c] : covered) {
    if (c.second != count(c.first)) {
      std::printf("BAD  tensor '%s': parts cover %lld of %lld elements\n", name.c_str(),
                  static_cast<long long>(c.second), static_cast<long long>(count(c.first)));
      ++bad;
    }
  }
  std::printf("%s run %s step %lld: %zu tensors, %zu parts, %lld bytes checked, %d problems\n",
              bad ? "FAIL" : "OK", a.run.c_str(), static_cast<long long>(step), covered.size(),
              m["tensors"].size(), static_cast<long long>(bytes), bad);
  return bad ? 1 : 0;
}

// The whole tensors (parts joined) of the step, by name.
struct WholeTensor {
  std::string dtype;
  std::vector<int64_t> shape;
  std::string bytes;
};

WholeTensor join_parts(detail::ObjectStore& store, const std::string& dir,
                       const std::vector<detail::ShardRecord>& parts, int64_t step) {
  const auto& first = parts.front();
  const size_t elem = detail::dtype_size(first.dtype);
  WholeTensor t{first.dtype, first.global_shape,
                std::string(count(first.global_shape) * elem, '\0')};
  std::vector<int64_t> zero(first.global_shape.size(), 0);
  int64_t n = 0;
  for (const auto& s : parts) {
    std::string part = detail::read_part(store, dir, s);
    n += detail::copy_overlap(part.data(), s.offsets, s.sizes, t.bytes.data(), zero,
                              first.global_shape, elem);
  }
  if (n != count(first.global_shape)) {
    throw CheckpointError("tensor '" + first.name + "' is incomplete in step " +
                          std::to_string(step));
  }
  return t;
}

// safetensors: 8-byte little-endian header size, JSON header, then the tensors' bytes.
// Returns the bytes of tensor data written.
int64_t write_safetensors(const std::string& path, const json& metadata,
                          const std::vector<std::pair<std::string, WholeTensor>>& tensors) {
  json header = {{"__metadata__", metadata}};
  int64_t at = 0;
  for (const auto& [key, t] : tensors) {
    header[key] = {{"dtype", t.dtype}, {"shape", t.shape},
                   {"data_offsets", {at, at + static_cast<int64_t>(t.bytes.size())}}};
    at += static_cast<int64_t>(t.bytes.size());
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');  // align the data to 8 bytes
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  const uint64_t size = text.size();
  unsigned char le[8];
  for (int i = 0; i < 8; ++i) le[i] = static_cast<unsigned char>(size >> (8 * i));
  out.write(reinterpret_cast<const char*>(le), 8);
  out.write(text.data(), static_cast<std::streamsize>(text.size()));
  for (const auto& [key, t] : tensors) {
    out.write(t.bytes.data(), static_cast<std::streamsize>(t.bytes.size()));
  }
  if (!out) throw CheckpointError("cannot write " + path);
  return at;
}

std::map<std::string, std::vector<detail::ShardRecord>> parts_by_name(const json& m) {
  std::map<std::string, std::vector<detail::ShardRecord>> by_name;
  for (const auto& tj : m["tensors"]) {
    auto s = detail::shard_from_json(tj);
    by_name[s.name].push_back(std::move(s));
  }
  return by_name;
}

int export_safetensors(const Args& a) {
  const auto [store, step, m, dir] = open_step(a);
  std::vector<std::pair<std::string, WholeTensor>> tensors;
  for (const auto& [name, parts] : parts_by_name(m)) {
    if (name.rfind(a.prefix, 0) != 0) continue;
    tensors.emplace_back(name.substr(a.prefix.size()), join_parts(*store, dir, parts, step));
  }
  if (tensors.empty()) throw CheckpointError("no tensor named '" + a.prefix + "...' in step " + std::to_string(step));
  const int64_t bytes = write_safetensors(
      a.out, {{"format", "pt"}, {"run", a.run}, {"step", std::to_string(step)}}, tensors);
  std::printf("exported run %s step %lld: %zu tensors, %lld bytes -> %s\n", a.run.c_str(),
              static_cast<long long>(step), tensors.size(), static_cast<long long>(bytes),
              a.out.c_str());
  return 0;
}

// The blob `name` of the lowest rank that saved one; throws CheckpointError naming it when none
// did or its checksum fails.
std::string read_blob(detail::ObjectStore& store, const json& m, const std::string& dir,
                      const std::string& name, int64_t step) {
  for (const auto& r : m.at("ranks")) {
    for (const auto& bj : r.at("blobs")) {
      auto b = detail::blob_from_json(bj);
      if (b.name != name) continue;
      std::string v = store.get_range(dir + "/" + b.file, b.offset, b.nbytes);
      if (detail::crc32c(v.data(), v.size()) != b.crc) {
        throw CheckpointError("blob '" + name + "' of step " + std::to_string(step) +
                              " failed its checksum");
      }
      return v;
    }
  }
  throw CheckpointError("step " + std::to_string(step) + " of run '" + m.value("run", "") +
                        "' records no '" + name + "' blob: the program that saved it did not "
                        "describe its model for Hugging Face (llama_train does)");
}

// --format hf: the directory transformers' from_pretrained loads: config.json and
// model.safetensors with the tensors under the names the checkpoint's "export.hf" blob gives.
int export_hf(const Args& a) {
  const auto [store, step, m, dir] = open_step(a);
  const json layout = json::parse(read_blob(*store, m, dir, "export.hf", step));
  auto by_name = parts_by_name(m);
  std::vector<std::pair<std::string, WholeTensor>> tensors;
  for (const auto& [ours, theirs] : layout.at("tensors").items()) {
    auto it = by_name.find(ours);
    if (it == by_name.end()) {
      throw CheckpointError("step " + std::to_string(step) + " has no tensor '" + ours +
                            "' (Hugging Face's " + theirs.get<std::string>() + ")");
    }
    tensors.emplace_back(theirs.get<std::string>(), join_parts(*store, dir, it->second, step));
  }
  std::filesystem::create_directories(a.out);
  const int64_t bytes = write_safetensors(a.out + "/model.safetensors", {{"format", "pt"}}, tensors);
  std::ofstream config(a.out + "/config.json", std::ios::trunc);
  config << layout.at("config").dump(2) << "\n";
  if (!config) throw CheckpointError("cannot write " + a.out + "/config.json");
  std::printf("exported run %s step %lld for Hugging Face: %zu tensors, %lld bytes -> %s\n",
              a.run.c_str(), static_cast<long long>(step), tensors.size(),
              static_cast<long long>(bytes), a.out.c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) return usage();
  Args a;
  a.command = argv[1];
  for (int i = 2; i < argc; ++i) {
    std::string k = argv[i];
    if (i + 1 >= argc) return usage();
    std::string v = argv[++i];
    if (k == "--run") a.run = v;
    else if (k == "--durable") a.durable = v;
    else if (k == "--step") a.step = std::stoll(v);
    else if (k == "--out") a.out = v;
    else if (k == "--prefix") a.prefix = v;
    else if (k == "--format") a.format = v;
    else return usage();
  }
  if (a.run.empty()) return usage();
  try {
    if (a.command == "list") return list(a);
    if (a.durable.empty()) return usage();
    if (a.command == "verify") return verify(a);
    if (a.command == "export" && !a.out.empty()) {
      if (a.format == "hf") return export_hf(a);
      if (a.format == "safetensors") return export_safetensors(a);
      std::fprintf(stderr, "tenax-ckpt: --format %s: expected safetensors or hf\n", a.format.c_str());
      return 2;
    }
    return usage();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "tenax-ckpt: %s\n", e.what());
    return 1;
  }
}
