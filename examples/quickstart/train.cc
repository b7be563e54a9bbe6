// The README's "use tenax in your trainer" example: data-parallel gradient averaging by hand.
// Build it against an installed tenax (find_package(tenax)) and run it under mpirun or tenaxrun.

#include <torch/torch.h>
#include <tenax/tenax.h>

#include <iostream>

int main() {
  tenax::World world = tenax::init();  // rank, size and communicator from the launcher
  torch::manual_seed(0);                // same initial weights on every rank
  torch::nn::Linear model(16, 1);
  torch::optim::SGD opt(model->parameters(), 0.1);

  for (int step = 0; step < 50; ++step) {
    torch::manual_seed(1000 * step + world.rank);  // each rank draws its own shard of the batch
    auto x = torch::randn({32, 16});
    auto y = x.sum(1, /*keepdim=*/true);
    auto loss = torch::mse_loss(model(x), y);
    opt.zero_grad();
    loss.backward();
    for (auto& p : model->parameters()) {
      world.comm->all_reduce(p.grad(), tenax::ReduceOp::kAvg);
    }
    opt.step();
    if (world.rank == 0 && step % 10 == 0) {
      std::cout << "step " << step << " loss " << loss.item<float>() << std::endl;
    }
  }
  world.comm->barrier();
  return 0;
}
