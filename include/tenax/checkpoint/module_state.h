#pragma once

// Building a StateDict from LibTorch objects. Parameters of tenax's tensor-parallel layers are
// recorded as parts of the whole layer's tensors (ColumnParallelLinear and
// VocabParallelEmbedding split dim 0, RowParallelLinear's weight dim 1), so a checkpoint saved
// on one tp size restores on another. The StateDict refers to the live tensors: save() copies
// them, restore() writes into them.
// Thread rules: these functions read (and the apply_* ones write) the module's and optimizer's
// tensors: call them on the thread that trains, between steps.

#include <torch/nn/module.h>
#include <torch/optim/adamw.h>

#include <functional>
#include <string>

#include "tenax/checkpoint/state.h"
#include "tenax/core/export.h"
#include "tenax/parallel/fully_sharded.h"
#include "tenax/parallel/zero.h"

namespace tenax {

// Maps a parameter's name in this process's module to its name in the whole model (e.g. a
// pipeline stage's "layers.0.w" to "layers.8.w"). Identity when empty.
using NameMap = std::function<std::string(const std::string&)>;

// Adds every parameter and buffer of `module` as "<prefix><name>".
TENAX_API void add_module_state(StateDict& state, const torch::nn::Module& module,
                                const std::string& prefix = "", const NameMap& rename = {});

// Adds AdamW's state for every parameter of `module` the optimizer holds: "<prefix><name>.exp_avg"
// and ".exp_avg_sq" (sharded like the parameter) and the integer "<prefix><name>.step".
// Creates zero state for parameters that have none yet (before the first step), so that a
// restore into a fresh optimizer has tensors to fill. The moments are live tensors; the step
// counts are copies: call record_adamw_steps() before each save, and apply_adamw_steps()
// after a restore to copy the restored counts back into the optimizer.
TENAX_API void add_adamw_state(StateDict& state, torch::optim::AdamW& optimizer,
                               const torch::nn::Module& module,
                               const std::string& prefix = "optim.", const NameMap& rename = {});
TENAX_API void record_adamw_steps(StateDict& state, torch::optim::AdamW& optimizer,
                                  const torch::nn::Module& module,
                                  const std::string& prefix = "optim.", const NameMap& rename = {});
TENAX_API void apply_adamw_steps(const StateDict& state, torch::optim::AdamW& optimizer,
                                 const torch::nn::Module& module,
                                 const std::string& prefix = "optim.", const NameMap& rename = {});

// Fully sharded data parallelism: the same entries from the shards this rank holds, each the
// part of the whole parameter's (or moment's) tensor at its rows, within the tp part when the
// module is tensor-parallel too. A checkpoint saved on one dp or tp size restores on another,
// or without FullyShardedDataParallel. The optimizer is the one over fsdp.parameters().
TENAX_API void add_module_state(StateDict& state, const FullyShardedDataParallel& fsdp,
                                const std::string& prefix = "", const NameMap& rename = {});
TENAX_API void add_adamw_state(StateDict& state, torch::optim::AdamW& optimizer,
                               const FullyShardedDataParallel& fsdp,
                               const std::string& prefix = "optim.", const NameMap& rename = {});
TENAX_API void record_adamw_steps(StateDict& state, torch::optim::AdamW& optimizer,
                                  const FullyShardedDataParallel& fsdp,
                                  const std::string& prefix = "optim.", const NameMap& rename = {});
TENAX_API void apply_adamw_steps(const StateDict& state, torch::optim::AdamW& optimizer,
                                 const FullyShardedDataParallel& fsdp,
                                 const std::string& prefix = "optim.", const NameMap& rename = {});

// Adds ZeroAdamW's sharded state: "<prefix>exp_avg" and "<prefix>exp_avg_sq" as this rank's
// part of flat vectors of total_numel() elements (padding left out), and "<prefix>step". A
// checkpoint saved on one dp size restores on another (the flat order is the parameters'
// order). Creates zero state before the first step. After a restore of the parameters and of
// this state, call apply_zero_adamw_state().
TENAX_API void add_zero_adamw_state(StateDict& state, ZeroAdamW& optimizer,
                                    const std::string& prefix = "zero.");
TENAX_API void record_zero_adamw_step(StateDict& state, ZeroAdamW& optimizer,
                                      const std::string& prefix = "zero.");
TENAX_API void apply_zero_adamw_state(const StateDict& state, ZeroAdamW& optimizer,
                                      const std::string& prefix = "zero.");

}  // namespace tenax
