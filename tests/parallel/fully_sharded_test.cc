// FullyShardedDataParallel in one process (a one-rank group): the gradients are those of the
// plain module, the module's parameters hold no memory outside forward and backward, the
// next unit's gather is prefetched, and a parameter in two units or a unit out of range is a
// clear error. The multi-rank behaviour is tested through llama_train (tests/llama).

#include "tenax/parallel/fully_sharded.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <chrono>
#include <memory>

#include "tenax/comm/communicator.h"
#include "tenax/core/error.h"
#include "tenax/store/store.h"
#include "tenax/store/store_server.h"

namespace {

using namespace std::chrono_literals;

struct OneRank {
  tenax::StoreServer server{"127.0.0.1", 0, "t"};
  std::shared_ptr<tenax::Communicator> comm;
  OneRank() {
    auto store = tenax::TcpStore::connect("127.0.0.1", server.port(), "t", 5s);
    tenax::CommOptions o;
    o.name = "fsdp-unit";
    comm = tenax::create_communicator(tenax::Backend::kGloo, store, 0, 1, o);
  }
};

// Three Linear layers; each is a unit, and the Sequential's own (none) is the root.
std::shared_ptr<torch::nn::SequentialImpl> mlp() {
  torch::manual_seed(3);
  return std::make_shared<torch::nn::SequentialImpl>(
      torch::nn::Linear(8, 16), torch::nn::Functional(torch::relu), torch::nn::Linear(16, 16),
      torch::nn::Functional(torch::relu), torch::nn::Linear(16, 4));
}

std::vector<std::shared_ptr<torch::nn::Module>> units_of(torch::nn::SequentialImpl& seq) {
  return {seq[0], seq[2], seq[4]};
}

// The model's forward, each Linear through run_unit.
torch::Tensor sharded_forward(tenax::FullyShardedDataParallel& fsdp, torch::nn::SequentialImpl& seq,
                              const torch::Tensor& x) {
  return fsdp.forward([&] {
    torch::Tensor h = x;
    size_t unit = 0;
    for (size_t i = 0; i < seq.size(); ++i) {
      if (i % 2 == 0) {
        h = fsdp.run_unit(unit++, [&] { return seq[i]->as<torch::nn::LinearImpl>()->forward(h); });
      } else {
        h = torch::relu(h);
      }
    }
    return h;
  });
}

TEST(FullyShardedTest, GradientsEqualThePlainModulesAndTheWeightsHoldNoMemoryBetweenSteps) {
  OneRank r;
  auto plain = mlp();
  auto sharded = mlp();
  tenax::FullyShardedDataParallel fsdp(sharded, units_of(*sharded), r.comm);
  auto x = torch::randn({5, 8});
  for (int step = 0; step < 2; ++step) {  // twice: the second gathers from the shards again
    plain->zero_grad();
    for (auto& s : fsdp.parameters()) {
      if (s.grad().defined()) s.mutable_grad().zero_();
    }
    plain->forward(x).pow(2).sum().backward();
    sharded_forward(fsdp, *sharded, x).pow(2).sum().backward();
    fsdp.sync();
    const auto want = plain->parameters();
    const auto& got = fsdp.sharded_parameters();
    ASSERT_EQ(want.size(), got.size());
    for (size_t i = 0; i < want.size(); ++i) {
      EXPECT_TRUE(torch::allclose(want[i].grad(), got[i].shard.grad(), 1e-6, 1e-7)) << got[i].name;
      EXPECT_EQ(got[i].param.storage().nbytes(), 0u) << got[i].name << " holds memory";
      EXPECT_EQ(got[i].param.sizes(), want[i].sizes()) << got[i].name;
    }
  }
  int64_t shard_bytes = 0;
  for (const auto& s : fsdp.parameters()) shard_bytes += s.numel() * 4;
  EXPECT_EQ(fsdp.parameter_bytes(), shard_bytes);
  // Forward prefetches the next unit, backward the previous: every unit but the first's first
  // forward and the last's (kept into its backward) found its gather under way.
  EXPECT_GE(fsdp.prefetch_hits(), 4);
}

TEST(FullyShardedTest, WithoutPrefetchNoGatherIsFoundUnderWay) {
  OneRank r;
  auto seq = mlp();
  tenax::FullyShardedDataParallel fsdp(seq, units_of(*seq), r.comm,
                                       tenax::FullyShardedOptions().prefetch_next(false));
  sharded_forward(fsdp, *seq, torch::randn({2, 8})).sum().backward();
  fsdp.sync();
  EXPECT_EQ(fsdp.prefetch_hits(), 0);
}

TEST(FullyShardedTest, AParameterInTwoUnitsOrAUnitOutOfRangeIsAClearError) {
  OneRank r;
  auto seq = mlp();
  try {
    // The whole Sequential as a third unit holds the first Linear's parameters again.
    auto units = units_of(*seq);
    units[2] = seq;
    tenax::FullyShardedDataParallel bad(seq, units, r.comm);
    ADD_FAILURE() << "no error for a parameter in two units";
  } catch (const tenax::ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("is in units 0 and 2"), std::string::npos) << e.what();
  }
  tenax::FullyShardedDataParallel fsdp(seq, units_of(*seq), r.comm);
  EXPECT_THROW(fsdp.run_unit(3, [] { return torch::zeros({1}); }), tenax::ConfigError);
}

}  // namespace
