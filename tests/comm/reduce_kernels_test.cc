// The element-wise reduction kernels against LibTorch: the same float computation rounded to
// the dtype once, bit for bit, on random data with NaNs, ties and an odd tail.

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "comm/reduce_kernels.h"

namespace {

using tenax::ReduceOp;

at::Tensor torch_reference(const at::Tensor& x, const at::Tensor& y, ReduceOp op) {
  at::Tensor fx = x.to(at::kFloat), fy = y.to(at::kFloat);
  at::Tensor r;
  switch (op) {
    case ReduceOp::kSum: r = fx + fy; break;
    case ReduceOp::kProduct: r = fx * fy; break;
    case ReduceOp::kMin: r = at::minimum(fx, fy); break;
    case ReduceOp::kMax: r = at::maximum(fx, fy); break;
    default: break;
  }
  return r.to(x.scalar_type());
}

class HalfKernelTest
    : public ::testing::TestWithParam<std::tuple<at::ScalarType, ReduceOp>> {};

TEST_P(HalfKernelTest, MatchesTorchRoundingBitForBit) {
  auto [dtype, op] = GetParam();
  at::manual_seed(7);
  const int64_t n = 4099;  // not a multiple of the vector width
  at::Tensor x = (at::randn({n}) * 300).to(dtype), y = (at::randn({n}) * 300).to(dtype);
  y[5] = std::numeric_limits<float>::quiet_NaN();
  x[17] = std::numeric_limits<float>::infinity();
  at::Tensor out = at::empty_like(x);
  tenax::detail::reduce_kernel(dtype, op)(out.data_ptr(), x.data_ptr(), y.data_ptr(), n);
  at::Tensor want = torch_reference(x, y, op);
  at::Tensor both_nan = at::isnan(out) & at::isnan(want);
  at::Tensor equal = out.view(at::kShort).eq(want.view(at::kShort)) | both_nan;
  EXPECT_TRUE(equal.all().item<bool>())
      << "first mismatch at " << (~equal).nonzero()[0].item<int64_t>();
}

INSTANTIATE_TEST_SUITE_P(
    HalfTypes, HalfKernelTest,
    ::testing::Combine(::testing::Values(at::kHalf, at::kBFloat16),
                       ::testing::Values(ReduceOp::kSum, ReduceOp::kProduct, ReduceOp::kMin,
                                         ReduceOp::kMax)));

TEST(ReduceKernelTest, FloatMinMaxPropagateNaNLikeTorch) {
  at::Tensor x = at::randn({37}), y = at::randn({37});
  y[3] = std::numeric_limits<float>::quiet_NaN();
  x[30] = std::numeric_limits<float>::quiet_NaN();
  for (ReduceOp op : {ReduceOp::kMin, ReduceOp::kMax}) {
    at::Tensor out = at::empty_like(x);
    tenax::detail::reduce_kernel(at::kFloat, op)(out.data_ptr(), x.data_ptr(), y.data_ptr(), 37);
    at::Tensor want = torch_reference(x, y, op);
    EXPECT_TRUE(at::allclose(out, want, 0, 0, /*equal_nan=*/true));
  }
}

TEST(ReduceKernelTest, InPlaceOutputAliasingAnInputIsCorrect) {
  at::Tensor a = at::arange(1031, at::kFloat), b = at::ones({1031});
  tenax::detail::reduce_kernel(at::kFloat, ReduceOp::kSum)(a.data_ptr(), a.data_ptr(), b.data_ptr(), 1031);
  EXPECT_TRUE(a.equal(at::arange(1031, at::kFloat) + 1));
}

}  // namespace
