// The README's elastic example: the quickstart made to survive failures. When a rank dies, the
// others re-form without it, take the state of the last completed step from their memory and
// go on; a restarted rank rejoins. Run it under mpirun --enable-recovery or tenaxrun.

#include <torch/torch.h>
#include <tenax/checkpoint/module_state.h>
#include <tenax/elastic/elastic.h>
#include <tenax/parallel/data_parallel.h>
#include <tenax/tenax.h>

#include <iostream>

class Quickstart : public tenax::ElasticJob {
 public:
  // After every (re-)formation of the worker set: the model, its data parallelism and optimizer
  // over the ranks of this generation, and the state that is snapshot after each step.
  void setup(const tenax::ElasticWorld& world) override {
    rank_ = world.rank;
    torch::manual_seed(0);  // step 0's weights, the same on every rank
    model_ = torch::nn::Linear(16, 1);
    ddp_ = std::make_unique<tenax::DataParallel>(model_.ptr(), world.comm);
    opt_ = std::make_unique<torch::optim::SGD>(model_->parameters(), 0.1);
    state_ = tenax::StateDict();
    tenax::add_module_state(state_, *model_);
  }
  tenax::StateDict& state() override { return state_; }
  void restored(int64_t steps_done) override {
    if (rank_ == 0) std::cout << "resuming after step " << steps_done << std::endl;
  }
  void train_step(int64_t step) override {
    torch::manual_seed(1000 * step + rank_);  // each rank draws its own shard of the batch
    auto x = torch::randn({32, 16});
    auto loss = torch::mse_loss(model_(x), x.sum(1, /*keepdim=*/true));
    opt_->zero_grad();
    loss.backward();
    opt_->step();
    if (rank_ == 0 && step % 10 == 0) {
      std::cout << "step " << step << " loss " << loss.item<float>() << std::endl;
    }
  }

 private:
  int rank_ = 0;
  torch::nn::Linear model_{nullptr};
  std::unique_ptr<tenax::DataParallel> ddp_;
  std::unique_ptr<torch::optim::SGD> opt_;
  tenax::StateDict state_;
};

int main() {
  tenax::World world = tenax::connect();  // identity and the store; no communicator yet
  tenax::ElasticOptions options;
  options.rendezvous.min_workers = 2;  // with fewer ranks alive, stop with a clear error
  tenax::ElasticRunner runner(options, world.store);
  Quickstart job;
  const tenax::RunResult r = runner.run(job, 100);
  std::cout << tenax::to_string(r.reason) << " after " << runner.events().size()
            << " re-formations" << std::endl;
  return tenax::exit_code(r.reason);  // 0, or why this member had to leave (docs/elastic.md)
}
