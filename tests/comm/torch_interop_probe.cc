// A tenax communicator driven from a Python process that has torch loaded (ctypes), for
// torch_interop_test.py: the process then holds torch's Gloo (libtorch_cpu) and tenax's, and
// both must work, in turn and at once. Built as a module against the public library only.

#include <ATen/ATen.h>

#include <cstring>
#include <exception>
#include <string>

#include "tenax/tenax.h"

namespace {

tenax::World* world = nullptr;
std::string last_error;

int fail(const std::exception& e) {
  last_error = e.what();
  return -1;
}

}  // namespace

extern "C" {

// tenax::init() from the launcher's environment (tenaxrun). Returns 0, or -1 (see
// tenax_probe_error).
__attribute__((visibility("default"))) int tenax_probe_init() {
  try {
    world = new tenax::World(tenax::init());
    return 0;
  } catch (const std::exception& e) {
    return fail(e);
  }
}

// `iters` all-reduces (sum) of `numel` floats, rank r contributing r + 1 + i * 1e-3 at element
// i, each result checked. Returns the number of wrong elements, or -1 on an error.
__attribute__((visibility("default"))) long tenax_probe_all_reduce(long numel, int iters) {
  try {
    const int n = world->size;
    long wrong = 0;
    auto base = at::arange(numel, at::kFloat) * 1e-3f;
    const auto expected = base * n + static_cast<float>(n * (n + 1) / 2);
    for (int it = 0; it < iters; ++it) {
      at::Tensor t = base + static_cast<float>(world->rank + 1);
      world->comm->all_reduce(t);
      wrong += (t - expected).abs().gt(1e-3f * n).sum().item<int64_t>();
    }
    return wrong;
  } catch (const std::exception& e) {
    return fail(e);
  }
}

__attribute__((visibility("default"))) const char* tenax_probe_error() {
  return last_error.c_str();
}

__attribute__((visibility("default"))) void tenax_probe_finish() {
  if (world) world->comm->barrier();
  delete world;
  world = nullptr;
}
}
