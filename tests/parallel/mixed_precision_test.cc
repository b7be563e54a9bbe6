// Mixed precision in one process: autocast regions, fp32 master gradients, recomputation under
// autocast, dtype parsing.

#include "tenax/parallel/mixed_precision.h"

#include <ATen/autocast_mode.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "tenax/core/error.h"
#include "tenax/parallel/recompute.h"

namespace {

TEST(AutocastTest, MatrixProductsRunInBf16AndTheFp32WeightsGetFp32Gradients) {
  torch::manual_seed(3);
  torch::nn::Linear fc(8, 4);
  auto x = torch::randn({2, 8});
  torch::Tensor y;
  {
    tenax::Autocast bf16(at::kCPU, at::kBFloat16);
    y = fc(x);
  }
  EXPECT_EQ(y.scalar_type(), at::kBFloat16);
  y.to(at::kFloat).sum().backward();
  EXPECT_EQ(fc->weight.scalar_type(), at::kFloat);
  EXPECT_EQ(fc->weight.grad().scalar_type(), at::kFloat);
  // Close to the fp32 product, not equal to it.
  auto exact = fc(x);
  EXPECT_TRUE(torch::allclose(y.to(at::kFloat), exact, 2e-2, 2e-2));
  EXPECT_FALSE(torch::equal(y.to(at::kFloat), exact));
}

TEST(AutocastTest, ARegionRestoresWhatWasOnBeforeAndNests) {
  EXPECT_FALSE(at::autocast::is_autocast_enabled(at::kCPU));
  {
    tenax::Autocast outer(at::kCPU, at::kBFloat16);
    EXPECT_TRUE(at::autocast::is_autocast_enabled(at::kCPU));
    {
      tenax::Autocast off(at::kCPU, at::kFloat);
      EXPECT_FALSE(at::autocast::is_autocast_enabled(at::kCPU));
    }
    EXPECT_TRUE(at::autocast::is_autocast_enabled(at::kCPU));
    EXPECT_EQ(at::autocast::get_autocast_dtype(at::kCPU), at::kBFloat16);
  }
  EXPECT_FALSE(at::autocast::is_autocast_enabled(at::kCPU));
}

TEST(AutocastTest, RecomputingUnderAutocastGivesTheGradientsOfThePlainBf16Block) {
  auto run = [](bool recompute) {
    torch::manual_seed(5);
    torch::nn::Sequential block(torch::nn::Linear(16, 32), torch::nn::GELU(),
                                torch::nn::Linear(32, 16));
    auto x = torch::randn({4, 16}).requires_grad_();
    torch::Tensor out;
    {
      tenax::Autocast bf16(at::kCPU, at::kBFloat16);
      out = recompute
                ? tenax::recompute(
                      [&](const std::vector<torch::Tensor>& in) { return block->forward(in[0]); },
                      {x}, block->parameters())
                : block->forward(x);
    }
    out.to(at::kFloat).pow(2).sum().backward();  // backward outside the region
    std::vector<torch::Tensor> grads = {x.grad()};
    for (const auto& p : block->parameters()) grads.push_back(p.grad());
    return grads;
  };
  auto plain = run(false), again = run(true);
  ASSERT_EQ(plain.size(), again.size());
  for (size_t i = 0; i < plain.size(); ++i) {
    EXPECT_TRUE(torch::equal(plain[i], again[i])) << "gradient " << i;
  }
}

TEST(AutocastTest, DtypesParseByNameAndTheCpuTakesBf16Only) {
  EXPECT_EQ(tenax::parse_dtype("bf16", "--dtype"), at::kBFloat16);
  EXPECT_EQ(tenax::parse_dtype("fp32", "--dtype"), at::kFloat);
  try {
    tenax::parse_dtype("bfloat", "--dtype");
    FAIL() << "no error";
  } catch (const tenax::ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("--dtype: 'bfloat'"), std::string::npos) << e.what();
  }
  EXPECT_THROW(tenax::Autocast(at::kCPU, at::kHalf), tenax::ConfigError);
}

}  // namespace
