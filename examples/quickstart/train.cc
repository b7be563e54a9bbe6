// The README's "use tenax in your trainer" example: data-parallel training of a small model.
// Build it against an installed tenax (find_package(tenax)) and run it under mpirun or tenaxrun.

#include <torch/torch.h>
#include <tenax/parallel/data_parallel.h>
#include <tenax/tenax.h>

#include <iostream>

int main() {
  tenax::World world = tenax::init();  // rank, size and communicator from the launcher
  torch::nn::Linear model(16, 1);
  // Copies rank 0's weights to every rank; averages gradients during backward.
  tenax::DataParallel ddp(model.ptr(), world.comm);
  torch::optim::SGD opt(model->parameters(), 0.1);

  for (int step = 0; step < 50; ++step) {
    torch::manual_seed(1000 * step + world.rank);  // each rank draws its own shard of the batch
    auto x = torch::randn({32, 16});
    auto y = x.sum(1, /*keepdim=*/true);
    auto loss = torch::mse_loss(model(x), y);
    opt.zero_grad();
    loss.backward();  // gradients are averaged across ranks by the end of backward
    opt.step();
    if (world.rank == 0 && step % 10 == 0) {
      std::cout << "step " << step << " loss " << loss.item<float>() << std::endl;
    }
  }
  world.comm->barrier();
  return 0;
}
