#pragma once

// Element-wise reduction kernels used by the CPU collectives: out[i] = op(a[i], b[i]).
// Half-precision types are widened to float, reduced, and rounded to nearest even once per
// call (float16 uses the CPU's F16C instructions when it has them). Internal.

#include <c10/core/ScalarType.h>

#include <cstddef>

#include "tenax/comm/communicator.h"

namespace tenax::detail {

using ReduceFn = void (*)(void* out, const void* a, const void* b, size_t n);

// Returns the kernel for `dtype` and `op` (kAvg reduces as kSum; the caller divides).
// Throws ConfigError for a dtype tenax does not reduce.
ReduceFn reduce_kernel(c10::ScalarType dtype, ReduceOp op);

// True iff tenax's collectives accept `dtype`.
bool is_supported_dtype(c10::ScalarType dtype);

}  // namespace tenax::detail
