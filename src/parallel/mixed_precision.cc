#include "tenax/parallel/mixed_precision.h"

#include <ATen/autocast_mode.h>

#include "tenax/core/error.h"

namespace tenax {
namespace {

bool enabled(c10::DeviceType d) { return at::autocast::is_autocast_enabled(d); }

c10::ScalarType dtype_of(c10::DeviceType d) { return at::autocast::get_autocast_dtype(d); }

void set(c10::DeviceType d, bool on, c10::ScalarType dtype) {
  at::autocast::set_autocast_enabled(d, on);
  at::autocast::set_autocast_dtype(d, dtype);
}

}  // namespace

Autocast::Autocast(c10::DeviceType device, c10::ScalarType dtype)
    : device_(device), was_enabled_(enabled(device)), was_dtype_(dtype_of(device)) {
  if (device != c10::kCPU && device != c10::kCUDA) {
    throw ConfigError(std::string("Autocast: device ") + c10::DeviceTypeName(device) +
                      " is not cpu or cuda");
  }
  if (dtype == c10::kFloat) {
    set(device, false, was_dtype_);
    return;
  }
  if (device == c10::kCPU && dtype != c10::kBFloat16) {
    throw ConfigError("Autocast: the CPU computes in bf16 only, not " + dtype_name(dtype));
  }
  if (dtype != c10::kBFloat16 && dtype != c10::kHalf) {
    throw ConfigError("Autocast: " + dtype_name(dtype) + " is not a compute dtype (bf16, fp16)");
  }
  set(device, true, dtype);
  at::autocast::increment_nesting();
}

Autocast::~Autocast() {
  if (enabled(device_) && at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
  set(device_, was_enabled_, was_dtype_);
}

c10::ScalarType parse_dtype(const std::string& text, const std::string& flag) {
  if (text == "fp32") return c10::kFloat;
  if (text == "bf16") return c10::kBFloat16;
  if (text == "fp16") return c10::kHalf;
  throw ConfigError(flag + ": '" + text + "' is not one of fp32, bf16, fp16");
}

std::string dtype_name(c10::ScalarType dtype) {
  switch (dtype) {
    case c10::kFloat:
      return "fp32";
    case c10::kBFloat16:
      return "bf16";
    case c10::kHalf:
      return "fp16";
    default:
      return c10::toString(dtype);
  }
}

}  // namespace tenax
