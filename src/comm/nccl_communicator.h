#pragma once

// The GPU backend: NCCL on a dedicated CUDA stream per communicator, ordered after the legacy
// default stream (LibTorch's default). Operations are non-blocking NCCL calls; Work polls the
// completion event and NCCL's async error until the deadline, then aborts the communicator.
// Internal; use create_communicator.

#include <memory>

#include "tenax/comm/communicator.h"

namespace tenax::detail {

// Number of visible CUDA devices (0 when the driver or devices are missing). Never throws.
int nccl_device_count();

std::shared_ptr<Communicator> create_nccl_communicator(std::shared_ptr<Store> store, int rank,
                                                       int size, const CommOptions& options);

}  // namespace tenax::detail
