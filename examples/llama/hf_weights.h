#pragma once

// The weights of a Hugging Face Llama directory (save_pretrained's safetensors files) into this
// model's parameters, under the names and shapes hf.h describes.
// Thread rules: load_hf_weights writes the tensors of the StateDict it is given: call it where
// nothing else uses them (between steps, on the thread that trains).

#include <tenax/checkpoint/state.h>

#include <string>

namespace llama {

// Fills every tensor of `state` (this rank's parts of the whole model's parameters, named as
// parameter_names() gives them, after `prefix`) from the safetensors files of DIR
// (model.safetensors, or the files model.safetensors.index.json lists), converting bf16, fp16
// or fp64 weights to the tensors' dtype and copying each part's slice of the whole tensor.
// Throws ConfigError naming the tensor (and file) when one is missing, has another shape, or a
// dtype it cannot read, and naming the file when it is not a safetensors file.
void load_hf_weights(const tenax::StateDict& state, const std::string& dir,
                     const std::string& prefix = "");

}  // namespace llama
