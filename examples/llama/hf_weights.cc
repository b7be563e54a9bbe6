#include "hf_weights.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <torch/torch.h>
#include <unistd.h>

#include <tenax/core/error.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>

#include "hf.h"

namespace llama {

namespace {

using nlohmann::json;

// One safetensors file, mapped: an 8-byte little-endian header size, the JSON header
// {name: {dtype, shape, data_offsets: [begin, end)}}, then the data the offsets count from.
class SafetensorsFile {
 public:
  explicit SafetensorsFile(const std::string& path) : path_(path) {
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) throw tenax::ConfigError("--init-from-hf: cannot open " + path);
    struct stat st {};
    ::fstat(fd, &st);
    size_ = static_cast<size_t>(st.st_size);
    void* p = size_ > 0 ? ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0) : MAP_FAILED;
    ::close(fd);
    if (p == MAP_FAILED) bad("cannot be mapped");
    data_ = static_cast<const char*>(p);
    if (size_ < 8) bad("is shorter than its header");
    uint64_t n = 0;
    for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<unsigned char>(data_[i]);
    if (n > size_ - 8) bad("declares a header of " + std::to_string(n) + " bytes");
    try {
      header_ = json::parse(data_ + 8, data_ + 8 + n);
    } catch (const json::exception& e) {
      bad(std::string("has no JSON header (") + e.what() + ")");
    }
    base_ = 8 + n;
  }
  ~SafetensorsFile() {
    if (data_) ::munmap(const_cast<char*>(data_), size_);
  }
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  bool has(const std::string& name) const { return header_.contains(name); }

  // The whole tensor `name`, as float32 (a copy).
  torch::Tensor tensor(const std::string& name) const {
    const json& t = header_.at(name);
    static const std::map<std::string, torch::ScalarType> kTypes = {
        {"F32", torch::kFloat32}, {"BF16", torch::kBFloat16}, {"F16", torch::kFloat16},
        {"F64", torch::kFloat64}};
    const std::string dtype = t.value("dtype", "");
    auto type = kTypes.find(dtype);
    if (type == kTypes.end()) {
      bad("holds tensor '" + name + "' as " + dtype + ": expected F32, BF16, F16 or F64");
    }
    const auto shape = t.at("shape").get<std::vector<int64_t>>();
    const auto range = t.at("data_offsets").get<std::vector<uint64_t>>();
    int64_t count = 1;
    for (int64_t d : shape) count *= d;
    const uint64_t bytes = static_cast<uint64_t>(count) * c10::elementSize(type->second);
    if (range.size() != 2 || range[1] - range[0] != bytes || base_ + range[1] > size_) {
      bad("gives tensor '" + name + "' offsets that do not fit its shape");
    }
    // The bytes may sit at any offset: copy them out before viewing them as the dtype.
    auto raw = torch::empty({count}, torch::dtype(type->second));
    std::memcpy(raw.data_ptr(), data_ + base_ + range[0], bytes);
    return raw.view(shape).to(torch::kFloat32);
  }

 private:
  [[noreturn]] void bad(const std::string& why) const {
    throw tenax::ConfigError("--init-from-hf: " + path_ + " " + why);
  }
  std::string path_;
  const char* data_ = nullptr;
  size_t size_ = 0;
  uint64_t base_ = 0;
  json header_;
};

// The safetensors files of `dir` and, for a sharded save, which file holds which tensor.
struct Checkpoint {
  std::map<std::string, std::unique_ptr<SafetensorsFile>> files;
  std::map<std::string, std::string> where;  // tensor -> file (sharded saves only)

  explicit Checkpoint(const std::string& dir) {
    const std::string index = dir + "/model.safetensors.index.json";
    if (std::filesystem::exists(index)) {
      std::ifstream in(index);
      json j;
      try {
        j = json::parse(in);
      } catch (const json::exception& e) {
        throw tenax::ConfigError("--init-from-hf: " + index + " is not JSON (" + e.what() + ")");
      }
      for (const auto& [name, file] : j.at("weight_map").items()) {
        const std::string f = file.get<std::string>();
        where[name] = f;
        if (!files.count(f)) files[f] = std::make_unique<SafetensorsFile>(dir + "/" + f);
      }
    } else {
      files["model.safetensors"] = std::make_unique<SafetensorsFile>(dir + "/model.safetensors");
    }
  }

  // The file holding `name`, or null.
  const SafetensorsFile* find(const std::string& name) const {
    if (where.empty()) {
      const auto& f = *files.begin()->second;
      return f.has(name) ? &f : nullptr;
    }
    auto it = where.find(name);
    if (it == where.end()) return nullptr;
    const auto& f = *files.at(it->second);
    return f.has(name) ? &f : nullptr;
  }
};

}  // namespace

void load_hf_weights(const tenax::StateDict& state, const std::string& dir,
                     const std::string& prefix) {
  Checkpoint ckpt(dir);
  torch::NoGradGuard no_grad;
  for (const tenax::TensorShard& s : state.tensors()) {
    if (s.name.rfind(prefix, 0) != 0) continue;
    const std::string theirs = hf_name(s.name.substr(prefix.size()));
    const SafetensorsFile* file = ckpt.find(theirs);
    if (!file) {
      throw tenax::ConfigError("--init-from-hf: " + dir + " has no tensor '" + theirs +
                               "' (this model's " + s.name.substr(prefix.size()) + ")");
    }
    torch::Tensor whole = file->tensor(theirs);
    if (whole.sizes().vec() != s.global_shape) {
      std::ostringstream why;
      why << "--init-from-hf: tensor '" << theirs << "' of " << dir << " has shape "
          << whole.sizes() << ", this model's " << s.name.substr(prefix.size()) << " "
          << c10::IntArrayRef(s.global_shape);
      throw tenax::ConfigError(why.str());
    }
    torch::Tensor part = whole;
    for (int64_t d = 0; d < part.dim(); ++d) part = part.narrow(d, s.offsets[d], s.tensor.size(d));
    s.tensor.copy_(part);
  }
}

}  // namespace llama
