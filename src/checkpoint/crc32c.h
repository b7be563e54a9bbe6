#pragma once

// CRC-32C (Castagnoli), the checksum of every checkpoint shard: SSE4.2's crc32 instruction
// where the CPU has it, a table otherwise. crc32c("123456789") == 0xe3069283.

#include <cstddef>
#include <cstdint>

namespace tenax::detail {

uint32_t crc32c(const void* data, size_t n, uint32_t crc = 0);

}  // namespace tenax::detail
