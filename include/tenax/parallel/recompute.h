#pragma once

// Activation recomputation ("activation checkpointing"): run a block of a model without
// keeping the activations inside it, and run it again during backward to get them back.
// Memory for the block's intermediate tensors is traded for one more forward of the block.
//
//   h = tenax::recompute([&](const std::vector<at::Tensor>& in) { return layer->forward(in[0]); },
//                        {h}, layer->parameters());
//
// Forward: `fn` runs with autograd off; only the inputs are saved. Backward: `fn` runs again on
// the saved inputs with autograd on, the incoming gradient is taken through that second graph
// to the inputs and the parameters, and both are handed back to the outer backward pass, which
// accumulates the parameters' gradients as for any other tensor (so hooks on them, such as
// DataParallel's, run in that pass). The gradients equal those of calling `fn` directly when
// `fn` computes the same values twice (no dropout or other randomness inside); collectives
// inside run again, in the same order on every rank, as Megatron does for tensor-parallel layers.
//
// When autograd is off, recompute() just calls `fn`.
// Thread rules: `fn` runs on the thread that calls recompute() and again on the thread autograd
// runs the backward pass on; one backward at a time when it holds collectives.

#include <ATen/core/Tensor.h>

#include <functional>
#include <vector>

#include "tenax/core/export.h"
#include "tenax/parallel/recompute_mode.h"

namespace tenax {

using RecomputeFn = std::function<at::Tensor(const std::vector<at::Tensor>& inputs)>;

// Returns fn(inputs) without keeping the activations inside fn (see above). `parameters`: every
// tensor requiring a gradient that `fn` uses besides its inputs (a module's parameters()). `fn`
// is kept (by value) until backward has run or the graph is freed; what it captures by
// reference must live as long. Throws ConfigError when an input is undefined, and in backward
// when `fn` used a tensor requiring a gradient that is not among `parameters`.
TENAX_API at::Tensor recompute(RecomputeFn fn, const std::vector<at::Tensor>& inputs,
                               const std::vector<at::Tensor>& parameters = {});

}  // namespace tenax
