#pragma once

// Training data: a flat binary file of token ids (little-endian uint16, or uint32 for
// vocabularies over 65,536: the nanoGPT / Megatron ".bin" layout), read through mmap, and a
// loader that maps a global sample index to a window of the file.
//
// Determinism: sample i of the run is window perm_e(i mod W) of the file, where W is the number
// of windows, e = i / W the epoch, and perm_e a seeded shuffle. A global batch at cursor c is
// samples [c, c + G); data-parallel rank r of d takes the contiguous slice
// [c + r·G/d, c + (r+1)·G/d). So the samples of a step depend only on the cursor, never on the
// world size, and a restarted run resumes exactly from a saved cursor.

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace llama {

class TokenFile {
 public:
  // Maps `path`; `token_bytes` is 2 or 4. Throws tenax::ConfigError naming the file when it is
  // missing, unreadable, empty or not a whole number of tokens.
  TokenFile(const std::string& path, int token_bytes = 2);
  ~TokenFile();
  TokenFile(const TokenFile&) = delete;
  TokenFile& operator=(const TokenFile&) = delete;

  int64_t size() const { return count_; }
  int64_t at(int64_t i) const;
  const std::string& path() const { return path_; }
  // The largest token id in the file (scanned once).
  int64_t max_token() const;

 private:
  std::string path_;
  int token_bytes_;
  const unsigned char* data_ = nullptr;
  size_t bytes_ = 0;
  int64_t count_ = 0;
};

class SampleLoader {
 public:
  // Windows of seq_len + 1 tokens (inputs and next-token targets) that do not overlap.
  // Throws tenax::ConfigError when the file holds fewer than seq_len + 1 tokens.
  SampleLoader(std::shared_ptr<const TokenFile> file, int64_t seq_len, uint64_t seed);

  int64_t seq_len() const { return seq_len_; }
  int64_t samples_per_epoch() const { return windows_; }

  // Writes the seq_len + 1 tokens of global sample `index` into `out`.
  void sample(int64_t index, int64_t* out) const;

  // The global sample indices data-parallel rank `dp_rank` of `dp_size` reads for the global
  // batch of `global_batch` samples starting at `cursor`. REQUIRES: dp_size divides
  // global_batch.
  static std::vector<int64_t> rank_samples(int64_t cursor, int64_t global_batch, int dp_rank,
                                           int dp_size);

 private:
  const std::vector<int64_t>& permutation(int64_t epoch) const;

  std::shared_ptr<const TokenFile> file_;
  int64_t seq_len_;
  uint64_t seed_;
  int64_t windows_;
  mutable int64_t cached_epoch_ = -1;
  mutable std::vector<int64_t> perm_;
};

// Byte-level tokenizer: token = byte value (vocabulary 256). Turns text files into the train
// and validation token files: documents are the entries between lines holding only "%" (the
// fortune(6) format) or, without such lines, whole files; every `val_every`-th document goes to
// validation. Returns the number of tokens written to each.
struct PrepareResult {
  int64_t train_tokens = 0, val_tokens = 0, documents = 0;
};
PrepareResult prepare_byte_corpus(const std::vector<std::string>& inputs,
                                  const std::string& out_dir, int val_every = 20);

}  // namespace llama
