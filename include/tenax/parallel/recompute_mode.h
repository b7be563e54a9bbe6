#pragma once

// What a model recomputes in backward (tenax/parallel/recompute.h), without LibTorch: memory
// estimates and flag parsing use it too. Pure functions: any thread.

#include <string>

#include "tenax/core/export.h"

namespace tenax {

// Nothing, each whole block (a decoder layer), or only a block's core attention (the score and
// softmax tensors, quadratic in the sequence length; Megatron's "selective").
enum class Recompute { kNone, kFull, kSelective };

// Parses "none", "full" or "selective"; ConfigError naming `flag` otherwise.
TENAX_API Recompute parse_recompute(const std::string& text, const std::string& flag);

// "none", "full" or "selective".
TENAX_API const char* recompute_name(Recompute mode);

}  // namespace tenax
