#pragma once

// Items 0..n-1 handed out in order to up to `threads` threads (the caller's included). The
// first exception an item throws stops the handing out and is rethrown after every thread
// has finished.

#include <cstddef>
#include <functional>

namespace tenax::detail {

void parallel_for(size_t n, size_t threads, const std::function<void(size_t)>& fn);

// Threads for memory-bound copies: up to 4, no more than the machine has.
size_t copy_threads();

}  // namespace tenax::detail
