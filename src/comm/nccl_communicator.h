#pragma once

// The GPU backend: NCCL (the copy LibTorch loads) on a stream from LibTorch's pool, one per
// communicator, ordered after the caller's current stream with an event; tensors from LibTorch's
// caching allocator, recorded as in use on that stream until the operation is done. Operations
// are non-blocking NCCL calls; Work polls the completion event and NCCL's async error until the
// deadline, then aborts the communicator; waiting orders the caller's current stream after it.
// Internal; use create_communicator.

#include <memory>

#include "tenax/comm/communicator.h"

namespace tenax::detail {

// Number of visible CUDA devices (0 when the driver or devices are missing). Never throws.
int nccl_device_count();

std::shared_ptr<Communicator> create_nccl_communicator(std::shared_ptr<Store> store, int rank,
                                                       int size, const CommOptions& options);

}  // namespace tenax::detail
