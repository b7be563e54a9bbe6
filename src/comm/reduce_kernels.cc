#include "comm/reduce_kernels.h"

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "tenax/core/error.h"

namespace tenax::detail {
namespace {

struct Sum { template <class T> static T apply(T a, T b) { return a + b; } };
struct Prod { template <class T> static T apply(T a, T b) { return a * b; } };
// Min and max propagate NaN, as torch.minimum / torch.maximum do (b != b only for NaN).
struct Min { template <class T> static T apply(T a, T b) { return (b < a || b != b) ? b : a; } };
struct Max { template <class T> static T apply(T a, T b) { return (a < b || b != b) ? b : a; } };

// Native types: the loop vectorizes.
template <class T, class Op>
void kernel(void* out, const void* a, const void* b, size_t n) {
  T* o = static_cast<T*>(out);
  const T* x = static_cast<const T*>(a);
  const T* y = static_cast<const T*>(b);
  for (size_t i = 0; i < n; ++i) o[i] = Op::apply(x[i], y[i]);
}

// bfloat16 is the top half of a float: widen by shifting, narrow with round-to-nearest-even
// (NaN stays NaN). Plain integer code, so the compiler vectorizes the whole loop.
inline float bf16_to_float(uint16_t h) {
  uint32_t bits = uint32_t(h) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}
inline uint16_t float_to_bf16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof(bits));
  if ((bits & 0x7fffffffu) > 0x7f800000u) return uint16_t((bits >> 16) | 0x40);  // quiet NaN
  bits += 0x7fffu + ((bits >> 16) & 1u);
  return uint16_t(bits >> 16);
}

template <class Op>
void bf16_kernel(void* out, const void* a, const void* b, size_t n) {
  uint16_t* o = static_cast<uint16_t*>(out);
  const uint16_t* x = static_cast<const uint16_t*>(a);
  const uint16_t* y = static_cast<const uint16_t*>(b);
  for (size_t i = 0; i < n; ++i) {
    o[i] = float_to_bf16(Op::apply(bf16_to_float(x[i]), bf16_to_float(y[i])));
  }
}

template <class Op>
__attribute__((target("avx2"))) inline __m256 apply8(__m256 x, __m256 y) {
  if constexpr (std::is_same_v<Op, Sum>) return _mm256_add_ps(x, y);
  else if constexpr (std::is_same_v<Op, Prod>) return _mm256_mul_ps(x, y);
  else {
    __m256 m = std::is_same_v<Op, Min> ? _mm256_min_ps(x, y) : _mm256_max_ps(x, y);
    // NaN in either lane wins (x + y is NaN then).
    return _mm256_blendv_ps(m, _mm256_add_ps(x, y), _mm256_cmp_ps(x, y, _CMP_UNORD_Q));
  }
}

// bfloat16 with AVX2, 8 lanes at a time: the same widening and rounding as above.
template <class Op>
__attribute__((target("avx2"))) void bf16_kernel_avx2(void* out, const void* a, const void* b,
                                                      size_t n) {
  uint16_t* o = static_cast<uint16_t*>(out);
  const uint16_t* x = static_cast<const uint16_t*>(a);
  const uint16_t* y = static_cast<const uint16_t*>(b);
  const __m256i one = _mm256_set1_epi32(1), bias = _mm256_set1_epi32(0x7fff);
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256i wx = _mm256_slli_epi32(
        _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(x + i))), 16);
    __m256i wy = _mm256_slli_epi32(
        _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(y + i))), 16);
    __m256 r = apply8<Op>(_mm256_castsi256_ps(wx), _mm256_castsi256_ps(wy));
    __m256i bits = _mm256_castps_si256(r);
    __m256i rounded = _mm256_add_epi32(
        bits, _mm256_add_epi32(bias, _mm256_and_si256(_mm256_srli_epi32(bits, 16), one)));
    __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(r, r, _CMP_UNORD_Q));
    __m256i quiet = _mm256_or_si256(bits, _mm256_set1_epi32(0x400000));
    __m256i hi = _mm256_srli_epi32(_mm256_blendv_epi8(rounded, quiet, nan), 16);
    __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi32(hi, hi), 0xD8);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(o + i), _mm256_castsi256_si128(packed));
  }
  bf16_kernel<Op>(o + i, x + i, y + i, n - i);
}

// float16 with the F16C conversion instructions, 8 lanes at a time. The SIMD paths are chosen
// at run time, so the library still runs on CPUs without AVX2.
template <class Op>
__attribute__((target("avx2,f16c"))) void fp16_kernel_f16c(void* out, const void* a,
                                                          const void* b, size_t n) {
  uint16_t* o = static_cast<uint16_t*>(out);
  const uint16_t* x = static_cast<const uint16_t*>(a);
  const uint16_t* y = static_cast<const uint16_t*>(b);
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256 fx = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(x + i)));
    __m256 fy = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(y + i)));
    __m256 r = apply8<Op>(fx, fy);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(o + i),
                     _mm256_cvtps_ph(r, _MM_FROUND_TO_NEAREST_INT));
  }
  for (; i < n; ++i) {
    float r = Op::apply(_cvtsh_ss(x[i]), _cvtsh_ss(y[i]));
    o[i] = _cvtss_sh(r, _MM_FROUND_TO_NEAREST_INT);
  }
}

// float16 without F16C: c10's software conversions.
template <class Op>
void fp16_kernel_portable(void* out, const void* a, const void* b, size_t n) {
  c10::Half* o = static_cast<c10::Half*>(out);
  const c10::Half* x = static_cast<const c10::Half*>(a);
  const c10::Half* y = static_cast<const c10::Half*>(b);
  for (size_t i = 0; i < n; ++i) {
    o[i] = static_cast<c10::Half>(Op::apply(static_cast<float>(x[i]), static_cast<float>(y[i])));
  }
}

bool has_avx2() {
  static const bool yes = __builtin_cpu_supports("avx2");
  return yes;
}

template <class Op>
ReduceFn fp16_kernel() {
  static const bool f16c = has_avx2() && __builtin_cpu_supports("f16c");
  return f16c ? &fp16_kernel_f16c<Op> : &fp16_kernel_portable<Op>;
}

template <class Op>
ReduceFn bf16_kernel_for_cpu() {
  return has_avx2() ? &bf16_kernel_avx2<Op> : &bf16_kernel<Op>;
}

template <class Op>
ReduceFn for_dtype(c10::ScalarType dtype) {
  switch (dtype) {
    case c10::ScalarType::Float: return &kernel<float, Op>;
    case c10::ScalarType::Double: return &kernel<double, Op>;
    case c10::ScalarType::Int: return &kernel<int32_t, Op>;
    case c10::ScalarType::Long: return &kernel<int64_t, Op>;
    case c10::ScalarType::Byte: return &kernel<uint8_t, Op>;
    case c10::ScalarType::Half: return fp16_kernel<Op>();
    case c10::ScalarType::BFloat16: return bf16_kernel_for_cpu<Op>();
    default:
      throw ConfigError(std::string("dtype ") + c10::toString(dtype) +
                        " is not supported by tenax collectives (use float32, float64, "
                        "float16, bfloat16, int32, int64 or uint8)");
  }
}

}  // namespace

bool is_supported_dtype(c10::ScalarType dtype) {
  switch (dtype) {
    case c10::ScalarType::Float:
    case c10::ScalarType::Double:
    case c10::ScalarType::Int:
    case c10::ScalarType::Long:
    case c10::ScalarType::Byte:
    case c10::ScalarType::Half:
    case c10::ScalarType::BFloat16:
      return true;
    default:
      return false;
  }
}

ReduceFn reduce_kernel(c10::ScalarType dtype, ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum:
    case ReduceOp::kAvg: return for_dtype<Sum>(dtype);
    case ReduceOp::kProduct: return for_dtype<Prod>(dtype);
    case ReduceOp::kMin: return for_dtype<Min>(dtype);
    case ReduceOp::kMax: return for_dtype<Max>(dtype);
  }
  throw ConfigError("unknown reduce op");
}

}  // namespace tenax::detail
