#include "comm/argument_checks.h"

#include <algorithm>
#include <sstream>

#include "comm/reduce_kernels.h"
#include "tenax/core/error.h"

namespace tenax::detail {

std::string describe(const at::Tensor& t) {
  if (!t.defined()) return "undefined tensor";
  std::ostringstream os;
  os << c10::toString(t.scalar_type()) << t.sizes() << " on " << t.device();
  return os.str();
}

void check_tensor(const OpContext& ctx, const at::Tensor& t, const char* name) {
  if (!t.defined()) throw ConfigError(ctx.where() + ": tensor '" + name + "' is undefined");
  if (!is_supported_dtype(t.scalar_type())) {
    throw ConfigError(ctx.where() + ": tensor '" + name + "' (" + describe(t) +
                      ") has an unsupported dtype; use float32, float64, float16, bfloat16, "
                      "int32, int64 or uint8");
  }
  if (t.is_cuda() != ctx.cuda) {
    throw ConfigError(
        ctx.where() + ": tensor '" + name + "' is " + describe(t) + " but the " +
        (ctx.cuda ? "nccl backend needs CUDA tensors" : "gloo backend needs CPU tensors"));
  }
  if (t.is_sparse()) {
    throw ConfigError(ctx.where() + ": tensor '" + name + "' is sparse; pass a dense tensor");
  }
}

void check_rank(const OpContext& ctx, int peer, const char* what) {
  if (peer < 0 || peer >= ctx.size) {
    throw ConfigError(ctx.where() + ": " + what + " " + std::to_string(peer) +
                      " is out of range [0, " + std::to_string(ctx.size) + ")");
  }
}

namespace {

// Both tensors valid and of one dtype.
void check_pair(const OpContext& ctx, const at::Tensor& input, const at::Tensor& output) {
  check_tensor(ctx, input, "input");
  check_tensor(ctx, output, "output");
  if (input.scalar_type() != output.scalar_type()) {
    throw ConfigError(ctx.where() + ": tensor 'input' is " + describe(input) + " but 'output' is " +
                      describe(output) + "; their dtypes must match");
  }
}

// `big` must hold size() times the elements of `small`.
void check_size_times(const OpContext& ctx, const at::Tensor& big, const char* big_name,
                      const at::Tensor& small, const char* small_name) {
  if (big.numel() == small.numel() * ctx.size) return;
  throw ConfigError(ctx.where() + ": '" + big_name + "' is " + describe(big) + " and '" +
                    small_name + "' is " + describe(small) + "; " + big_name +
                    " must hold size() x " + small_name +
                    ".numel() = " + std::to_string(small.numel() * ctx.size) + " elements");
}

}  // namespace

void check_all_reduce(const OpContext& ctx, const at::Tensor& input, const at::Tensor& output) {
  check_pair(ctx, input, output);
  if (input.numel() != output.numel()) {
    throw ConfigError(ctx.where() + ": 'input' is " + describe(input) + " but 'output' is " +
                      describe(output) + "; they must have the same number of elements");
  }
}

void check_reduce_scatter(const OpContext& ctx, const at::Tensor& output, const at::Tensor& input) {
  check_pair(ctx, input, output);
  check_size_times(ctx, input, "input", output, "output");
}

void check_all_gather(const OpContext& ctx, const at::Tensor& output, const at::Tensor& input) {
  check_pair(ctx, input, output);
  check_size_times(ctx, output, "output", input, "input");
}

void check_rooted(const OpContext& ctx, const at::Tensor& tensor, int root) {
  check_tensor(ctx, tensor, "tensor");
  check_rank(ctx, root, "root");
}

AllToAllCounts check_all_to_all(const OpContext& ctx, const at::Tensor& output,
                                const at::Tensor& input, const std::vector<int64_t>& output_splits,
                                const std::vector<int64_t>& input_splits) {
  check_pair(ctx, input, output);
  auto counts = [&](const std::vector<int64_t>& splits, const at::Tensor& t, const char* name) {
    if (splits.empty()) {
      if (t.numel() % ctx.size != 0) {
        throw ConfigError(
            ctx.where() + ": '" + name + "' is " + describe(t) + "; without " + name +
            "_splits its element count must divide by size() = " + std::to_string(ctx.size));
      }
      return std::vector<int64_t>(ctx.size, t.numel() / ctx.size);
    }
    int64_t total = 0;
    for (auto x : splits) total += x;
    if (static_cast<int>(splits.size()) != ctx.size || total != t.numel()) {
      throw ConfigError(
          ctx.where() + ": " + name + "_splits must have size() = " + std::to_string(ctx.size) +
          " entries summing to " + std::to_string(t.numel()) + " (tensor '" + name + "')");
    }
    return splits;
  };
  return {counts(input_splits, input, "input"), counts(output_splits, output, "output")};
}

void check_point_to_point(const OpContext& ctx, const at::Tensor& tensor, int peer, bool to_peer) {
  check_tensor(ctx, tensor, "tensor");
  check_rank(ctx, peer, to_peer ? "destination rank" : "source rank");
  if (peer == ctx.rank) {
    throw ConfigError(ctx.where() +
                      (to_peer ? ": cannot send to itself" : ": cannot receive from itself"));
  }
}

std::string call_text(int64_t count, int64_t dtype, const std::string& detail) {
  return std::to_string(count) + " x " + c10::toString(static_cast<c10::ScalarType>(dtype)) + " (" +
         detail + ")";
}

std::string mismatch_text(int other, const std::string& theirs, const std::string& mine) {
  return " does not match rank " + std::to_string(other) + ", which passed " + theirs +
         "; this rank passed " + mine;
}

void check_same_call(const OpContext& ctx, const std::string& desc, const CallSignature::Row& mine,
                     const std::vector<int64_t>& rows) {
  auto text = [](const int64_t* x) {
    return call_text(x[2], x[1], "op #" + std::to_string(x[0]) + ", root " + std::to_string(x[3]));
  };
  for (int r = 0; r < ctx.size; ++r) {
    const int64_t* x = &rows[r * mine.size()];
    if (std::equal(mine.begin(), mine.end(), x)) continue;
    throw ConfigError(ctx.where() + ": " + desc + mismatch_text(r, text(x), text(mine.data())));
  }
}

}  // namespace tenax::detail
