#include "data.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <tenax/core/error.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

namespace llama {

TokenFile::TokenFile(const std::string& path, int token_bytes)
    : path_(path), token_bytes_(token_bytes) {
  if (token_bytes != 2 && token_bytes != 4) {
    throw tenax::ConfigError("token file " + path + ": token size must be 2 or 4 bytes, not " +
                             std::to_string(token_bytes));
  }
  int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) {
    throw tenax::ConfigError("token file " + path + ": " + std::strerror(errno) +
                             " (make it with llama_prepare)");
  }
  struct stat st{};
  ::fstat(fd, &st);
  bytes_ = static_cast<size_t>(st.st_size);
  if (bytes_ == 0 || bytes_ % token_bytes != 0) {
    ::close(fd);
    throw tenax::ConfigError("token file " + path + ": " + std::to_string(bytes_) +
                             " bytes is not a positive whole number of " +
                             std::to_string(token_bytes) + "-byte tokens");
  }
  void* p = ::mmap(nullptr, bytes_, PROT_READ, MAP_SHARED, fd, 0);
  ::close(fd);
  if (p == MAP_FAILED) {
    throw tenax::ConfigError("token file " + path + ": mmap failed: " + std::strerror(errno));
  }
  data_ = static_cast<const unsigned char*>(p);
  count_ = static_cast<int64_t>(bytes_ / token_bytes);
}

TokenFile::~TokenFile() {
  if (data_) ::munmap(const_cast<unsigned char*>(data_), bytes_);
}

int64_t TokenFile::at(int64_t i) const {
  if (token_bytes_ == 2) {
    uint16_t v;
    std::memcpy(&v, data_ + 2 * i, 2);
    return v;
  }
  uint32_t v;
  std::memcpy(&v, data_ + 4 * i, 4);
  return v;
}

int64_t TokenFile::max_token() const {
  int64_t m = 0;
  for (int64_t i = 0; i < count_; ++i) m = std::max(m, at(i));
  return m;
}

namespace {

// splitmix64: a fixed, portable generator (std::uniform_int_distribution differs between
// standard libraries, which would change the data order between builds).
uint64_t mix(uint64_t& state) {
  uint64_t z = (state += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

}  // namespace

SampleLoader::SampleLoader(std::shared_ptr<const TokenFile> file, int64_t seq_len, uint64_t seed)
    : file_(std::move(file)), seq_len_(seq_len), seed_(seed) {
  if (seq_len < 1 || file_->size() < seq_len + 1) {
    throw tenax::ConfigError("token file " + file_->path() + " holds " +
                             std::to_string(file_->size()) + " tokens, fewer than one sample of " +
                             "--seq-len " + std::to_string(seq_len) + " + 1");
  }
  windows_ = (file_->size() - 1) / seq_len_;
}

const std::vector<int64_t>& SampleLoader::permutation(int64_t epoch) const {
  if (epoch != cached_epoch_) {
    perm_.resize(windows_);
    for (int64_t i = 0; i < windows_; ++i) perm_[i] = i;
    uint64_t state = seed_ * 0x100000001b3ULL + static_cast<uint64_t>(epoch);
    for (int64_t i = windows_ - 1; i > 0; --i) {
      const int64_t j = static_cast<int64_t>(mix(state) % static_cast<uint64_t>(i + 1));
      std::swap(perm_[i], perm_[j]);
    }
    cached_epoch_ = epoch;
  }
  return perm_;
}

void SampleLoader::sample(int64_t index, int64_t* out) const {
  const int64_t window = permutation(index / windows_)[index % windows_];
  const int64_t start = window * seq_len_;
  for (int64_t t = 0; t <= seq_len_; ++t) out[t] = file_->at(start + t);
}

std::vector<int64_t> SampleLoader::rank_samples(int64_t cursor, int64_t global_batch,
                                                int dp_rank, int dp_size) {
  const int64_t per_rank = global_batch / dp_size;
  std::vector<int64_t> ids(per_rank);
  for (int64_t i = 0; i < per_rank; ++i) ids[i] = cursor + dp_rank * per_rank + i;
  return ids;
}

namespace {

std::vector<std::string> split_documents(const std::string& text) {
  std::vector<std::string> docs;
  std::istringstream in(text);
  std::string line, doc;
  bool separated = false;
  while (std::getline(in, line)) {
    if (line == "%") {
      separated = true;
      if (!doc.empty()) docs.push_back(doc);
      doc.clear();
      continue;
    }
    doc += line;
    doc += '\n';
  }
  if (!doc.empty()) docs.push_back(doc);
  if (!separated) return {text};
  return docs;
}

void write_tokens(const std::string& path, const std::vector<uint16_t>& tokens) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(tokens.data()),
            static_cast<std::streamsize>(tokens.size() * sizeof(uint16_t)));
  if (!out) throw tenax::ConfigError("cannot write " + path);
}

}  // namespace

PrepareResult prepare_byte_corpus(const std::vector<std::string>& inputs,
                                  const std::string& out_dir, int val_every) {
  namespace fs = std::filesystem;
  std::vector<fs::path> files;
  for (const auto& in : inputs) {
    if (fs::is_directory(in)) {
      for (const auto& e : fs::directory_iterator(in)) {
        // fortune(6) directories hold "name", "name.dat" (an index) and "name.u8" (a link).
        if (e.is_regular_file() && !e.path().has_extension()) files.push_back(e.path());
      }
    } else if (fs::is_regular_file(in)) {
      files.emplace_back(in);
    } else {
      throw tenax::ConfigError("corpus input " + in + " is neither a file nor a directory");
    }
  }
  std::sort(files.begin(), files.end());
  if (files.empty()) throw tenax::ConfigError("no corpus files found in the inputs given");
  std::vector<uint16_t> train, val;
  PrepareResult r;
  for (const auto& f : files) {
    std::ifstream in(f, std::ios::binary);
    std::stringstream ss;
    ss << in.rdbuf();
    for (const auto& doc : split_documents(ss.str())) {
      auto& dst = (val_every > 0 && ++r.documents % val_every == 0) ? val : train;
      for (unsigned char ch : doc) dst.push_back(ch);
      dst.push_back('\n');
    }
  }
  fs::create_directories(out_dir);
  write_tokens((fs::path(out_dir) / "train.bin").string(), train);
  write_tokens((fs::path(out_dir) / "val.bin").string(), val);
  r.train_tokens = static_cast<int64_t>(train.size());
  r.val_tokens = static_cast<int64_t>(val.size());
  return r;
}

}  // namespace llama
