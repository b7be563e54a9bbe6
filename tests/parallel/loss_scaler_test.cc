// The loss scaler in one process: exact unscaling by powers of two, overflow found and backed
// off from, growth after a window of finite steps, its checkpointed state, its option checks.

#include "tenax/parallel/loss_scaler.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <functional>
#include <limits>
#include <utility>

#include "tenax/core/error.h"

namespace {

std::vector<torch::Tensor> gradients_of(torch::nn::Linear& fc, const torch::Tensor& x,
                                        tenax::LossScaler* scaler) {
  fc->zero_grad();
  auto loss = fc(x).pow(2).mean();
  (scaler ? scaler->scale(loss) : loss).backward();
  if (scaler) EXPECT_TRUE(scaler->unscale(fc->parameters(), {}));
  std::vector<torch::Tensor> out;
  for (auto& p : fc->parameters()) out.push_back(p.grad().clone());
  return out;
}

TEST(LossScalerTest, APowerOfTwoScaleGivesTheUnscaledGradientsBitForBit) {
  torch::manual_seed(5);
  torch::nn::Linear fc(16, 8);
  auto x = torch::randn({4, 16}) * 1e-3;  // small gradients, as fp16 needs scaling for
  const auto plain = gradients_of(fc, x, nullptr);
  tenax::LossScalerOptions o;
  o.init_scale = 4096;
  tenax::LossScaler scaler(o);
  const auto unscaled = gradients_of(fc, x, &scaler);
  ASSERT_EQ(plain.size(), unscaled.size());
  for (size_t i = 0; i < plain.size(); ++i) EXPECT_TRUE(torch::equal(plain[i], unscaled[i])) << i;
}

TEST(LossScalerTest, AnOverflowIsFoundTheStepSkippedAndTheScaleBacksOffToItsFloor) {
  tenax::LossScalerOptions o;
  o.init_scale = 8;
  o.min_scale = 2;
  tenax::LossScaler scaler(o);
  auto p = torch::zeros({3}, torch::requires_grad());
  p.mutable_grad() = torch::tensor({1.0f, std::numeric_limits<float>::infinity(), 2.0f});
  auto q = torch::zeros({2}, torch::requires_grad());  // no gradient: ignored
  EXPECT_FALSE(scaler.unscale({p, q}, {}));
  scaler.update(false);
  EXPECT_EQ(scaler.scale_value(), 4);
  p.mutable_grad() = torch::tensor({std::numeric_limits<float>::quiet_NaN(), 0.f, 0.f});
  EXPECT_FALSE(scaler.unscale({p}, {}));
  scaler.update(false);
  scaler.update(false);
  EXPECT_EQ(scaler.scale_value(), 2);  // not below min_scale
  EXPECT_EQ(scaler.overflows(), 3);
  p.mutable_grad() = torch::tensor({2.0f, 4.0f, 6.0f});
  EXPECT_TRUE(scaler.unscale({p, q}, {}));
  EXPECT_TRUE(torch::equal(p.grad(), torch::tensor({1.0f, 2.0f, 3.0f})));
}

TEST(LossScalerTest, TheScaleGrowsAfterAWindowOfFiniteStepsAndAnOverflowRestartsTheWindow) {
  tenax::LossScalerOptions o;
  o.init_scale = 16;
  o.growth_interval = 3;
  tenax::LossScaler scaler(o);
  scaler.update(true);
  scaler.update(true);
  scaler.update(false);  // 8, the window restarts
  scaler.update(true);
  scaler.update(true);
  EXPECT_EQ(scaler.scale_value(), 8);
  scaler.update(true);
  EXPECT_EQ(scaler.scale_value(), 16);
  o.dynamic = false;  // a static scale skips overflowing steps but never moves
  tenax::LossScaler fixed(o);
  fixed.update(false);
  for (int i = 0; i < 5; ++i) fixed.update(true);
  EXPECT_EQ(fixed.scale_value(), 16);
  EXPECT_EQ(fixed.overflows(), 1);
}

TEST(LossScalerTest, ItsStateRoundTripsExactly) {
  tenax::LossScalerOptions o;
  o.init_scale = 3.0e-7;  // not a power of two: the text must still be exact
  o.min_scale = 1e-9;
  o.growth_interval = 4;
  tenax::LossScaler a(o);
  a.update(false);
  a.update(true);
  tenax::LossScaler b;
  b.restore(a.state());
  EXPECT_EQ(b.scale_value(), a.scale_value());
  EXPECT_EQ(b.overflows(), 1);
  EXPECT_EQ(b.state(), a.state());
  EXPECT_THROW(b.restore("sixty-four"), tenax::ConfigError);
}

TEST(LossScalerTest, AnOptionOutOfRangeIsAConfigErrorNamingIt) {
  const std::vector<std::pair<std::string, std::function<void(tenax::LossScalerOptions&)>>> bad = {
      {"init_scale", [](auto& o) { o.init_scale = 0; }},
      {"growth_factor", [](auto& o) { o.growth_factor = 1; }},
      {"backoff_factor", [](auto& o) { o.backoff_factor = 1.5; }},
      {"growth_interval", [](auto& o) { o.growth_interval = 0; }},
      {"min_scale", [](auto& o) { o.min_scale = 1e9; }}};
  for (const auto& [name, spoil] : bad) {
    tenax::LossScalerOptions o;
    spoil(o);
    try {
      tenax::LossScaler s(o);
      ADD_FAILURE() << name << " accepted";
    } catch (const tenax::ConfigError& e) {
      EXPECT_NE(std::string(e.what()).find(name), std::string::npos) << e.what();
    }
  }
}

}  // namespace
