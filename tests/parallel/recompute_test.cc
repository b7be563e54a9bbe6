// Activation recomputation in one process: gradients equal to the plain call's, the block run
// again in backward, parameters reached with inputs that need no gradient, clear errors.

#include "tenax/parallel/recompute.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "tenax/core/error.h"

namespace {

struct Block : torch::nn::Module {
  Block() {
    a = register_module("a", torch::nn::Linear(16, 32));
    b = register_module("b", torch::nn::Linear(32, 16));
  }
  torch::Tensor forward(const torch::Tensor& x) { return x + b(torch::gelu(a(x)).tanh()); }
  torch::nn::Linear a{nullptr}, b{nullptr};
};

std::vector<std::shared_ptr<Block>> stack(int n) {
  torch::manual_seed(7);
  std::vector<std::shared_ptr<Block>> blocks;
  for (int i = 0; i < n; ++i) blocks.push_back(std::make_shared<Block>());
  return blocks;
}

// Runs the blocks in turn (every one recomputed, or none), and backward of a fixed loss.
torch::Tensor run(const std::vector<std::shared_ptr<Block>>& blocks, const torch::Tensor& x,
                  bool recompute, int* calls = nullptr) {
  torch::Tensor h = x;
  for (const auto& b : blocks) {
    if (!recompute) {
      h = b->forward(h);
      continue;
    }
    h = tenax::recompute(
        [b, calls](const std::vector<torch::Tensor>& in) {
          if (calls) ++*calls;
          return b->forward(in[0]);
        },
        {h}, b->parameters());
  }
  auto loss = (h * h).sum();
  loss.backward();
  return loss;
}

TEST(RecomputeTest, GradientsEqualThoseOfThePlainBlocksBitForBit) {
  auto plain = stack(3), again = stack(3);
  auto x1 = torch::randn({4, 8, 16}).requires_grad_();
  auto x2 = x1.detach().clone().requires_grad_();
  auto l1 = run(plain, x1, false);
  auto l2 = run(again, x2, true);
  EXPECT_TRUE(torch::equal(l1, l2));
  EXPECT_TRUE(torch::equal(x1.grad(), x2.grad()));
  for (size_t i = 0; i < plain.size(); ++i) {
    auto p = plain[i]->named_parameters(), q = again[i]->named_parameters();
    for (const auto& item : p) {
      ASSERT_TRUE(q[item.key()].grad().defined()) << item.key();
      EXPECT_TRUE(torch::equal(item.value().grad(), q[item.key()].grad()))
          << "block " << i << " " << item.key();
    }
  }
}

TEST(RecomputeTest, TheBlockRunsOnceInForwardAndOnceMoreInBackward) {
  auto blocks = stack(2);
  int calls = 0;
  torch::Tensor h = torch::randn({2, 16}).requires_grad_();
  auto b = blocks[0];
  auto out = tenax::recompute(
      [b, &calls](const std::vector<torch::Tensor>& in) {
        ++calls;
        return b->forward(in[0]);
      },
      {h}, b->parameters());
  EXPECT_EQ(calls, 1);
  // Nothing inside the block is kept: the output's graph is one node whose edges lead straight
  // to the leaves (the input and the four parameters).
  ASSERT_TRUE(out.grad_fn());
  EXPECT_NE(out.grad_fn()->name().find("RecomputeFunction"), std::string::npos);
  int leaves = 0;
  for (const auto& e : out.grad_fn()->next_edges()) {
    if (!e.function) continue;
    EXPECT_EQ(e.function->name(), "torch::autograd::AccumulateGrad");
    ++leaves;
  }
  EXPECT_EQ(leaves, 5);
  out.sum().backward();
  EXPECT_EQ(calls, 2);
}

TEST(RecomputeTest, InputsWithoutGradientsStillGiveTheParametersTheirs) {
  auto plain = stack(1), again = stack(1);
  auto x = torch::randn({4, 16});  // like token embeddings of a frozen table
  run(plain, x, false);
  run(again, x, true);
  for (const auto& item : plain[0]->named_parameters()) {
    auto g = again[0]->named_parameters()[item.key()].grad();
    ASSERT_TRUE(g.defined()) << item.key();
    EXPECT_TRUE(torch::equal(item.value().grad(), g)) << item.key();
  }
}

TEST(RecomputeTest, WithAutogradOffItIsAPlainCall) {
  auto blocks = stack(1);
  torch::NoGradGuard off;
  auto x = torch::randn({2, 16});
  auto b = blocks[0];
  auto out =
      tenax::recompute([b](const std::vector<torch::Tensor>& in) { return b->forward(in[0]); }, {x},
                       b->parameters());
  EXPECT_FALSE(out.grad_fn());
  EXPECT_TRUE(torch::equal(out, b->forward(x)));
}

TEST(RecomputeTest, AParameterLeftOutIsAClearErrorInBackward) {
  auto blocks = stack(1);
  auto b = blocks[0];
  auto x = torch::randn({2, 16}).requires_grad_();
  auto out =
      tenax::recompute([b](const std::vector<torch::Tensor>& in) { return b->forward(in[0]); }, {x},
                       b->a->parameters());  // b's parameters missing
  try {
    out.sum().backward();
    FAIL() << "no error";
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find("neither an input nor one of the parameters passed"),
              std::string::npos)
        << e.what();
  }
}

TEST(RecomputeTest, AnUnknownModeOrAnUndefinedInputIsAConfigErrorNamingIt) {
  EXPECT_EQ(tenax::parse_recompute("selective", "--recompute"), tenax::Recompute::kSelective);
  try {
    tenax::parse_recompute("some", "--recompute");
    FAIL() << "no error";
  } catch (const tenax::ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("--recompute: 'some'"), std::string::npos) << e.what();
  }
  EXPECT_THROW(tenax::recompute([](const std::vector<torch::Tensor>& in) { return in[0]; },
                                {torch::Tensor()}),
               tenax::ConfigError);
}

}  // namespace
