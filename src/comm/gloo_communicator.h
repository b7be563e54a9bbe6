#pragma once

// The CPU backend: Gloo's algorithms over Gloo's TCP transport, run on one worker thread per
// communicator, with tenax's failure handling around them. Internal; use create_communicator.

#include <memory>

#include "tenax/comm/communicator.h"

namespace tenax::detail {

std::shared_ptr<Communicator> create_gloo_communicator(std::shared_ptr<Store> store, int rank,
                                                       int size, const CommOptions& options);

}  // namespace tenax::detail
