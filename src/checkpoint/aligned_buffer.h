#pragma once

// A growable byte buffer whose data starts on a 4 KiB boundary, so that the directory tier can
// hand it to the device with O_DIRECT. Its memory is kept across clear(), so a buffer reused
// for the next persist copies into pages that are already touched.

#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <new>
#include <stdexcept>
#include <utility>

namespace tenax::detail {

class AlignedBuffer {
 public:
  static constexpr size_t kAlignment = 4096;

  AlignedBuffer() = default;
  AlignedBuffer(AlignedBuffer&& o) noexcept { swap(o); }
  AlignedBuffer& operator=(AlignedBuffer&& o) noexcept {
    AlignedBuffer(std::move(o)).swap(*this);
    return *this;
  }
  AlignedBuffer(const AlignedBuffer&) = delete;
  AlignedBuffer& operator=(const AlignedBuffer&) = delete;
  ~AlignedBuffer() { std::free(data_); }

  // Makes room for `n` bytes in all; the contents are dropped when it has to grow.
  void reserve(size_t n) {
    if (n <= capacity_) return;
    void* p = nullptr;
    if (::posix_memalign(&p, kAlignment, n) != 0) throw std::bad_alloc();
    std::free(data_);
    data_ = static_cast<char*>(p);
    capacity_ = n;
    size_ = 0;
  }
  // Appends `n` bytes into reserved room.
  void append(const char* src, size_t n) {
    if (size_ + n > capacity_) throw std::length_error("AlignedBuffer: append past reserved room");
    std::memcpy(data_ + size_, src, n);
    size_ += n;
  }
  void clear() { size_ = 0; }

  const char* data() const { return data_; }
  size_t size() const { return size_; }

 private:
  void swap(AlignedBuffer& o) noexcept {
    std::swap(data_, o.data_);
    std::swap(size_, o.size_);
    std::swap(capacity_, o.capacity_);
  }
  char* data_ = nullptr;
  size_t size_ = 0, capacity_ = 0;
};

}  // namespace tenax::detail
