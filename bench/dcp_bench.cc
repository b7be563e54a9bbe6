// tenax-dcp-bench: tenax's side of the comparison with torch.distributed.checkpoint
// (bench/dcp_reference.py; bench/compare_dcp.sh runs both). The state is 16 float32 tensors of
// --mib MiB in all, each split by rows over the ranks (as FSDP shards parameters).
//   save:    each rank's save stall (CheckpointEngine::save), the time from save() until the
//            step is committed in the durable directory (wait()), and a restore of that step by
//            a fresh engine (no memory tier left: from the directory), on the same ranks;
//            medians of --reps, after two saves that allocate the memory tier's two slots.
//   reshard: one process restores the newest step of --run from --dir into whole tensors
//            (parts written by another world size), median of --reps.
// Prints one line per measurement, "tenax <what> <seconds>", from rank 0.
//   tenaxrun --nproc-per-node 2 build/bench/tenax-dcp-bench --mib 1024 --dir /tmp/x --keep
//   build/bench/tenax-dcp-bench --mode reshard --mib 1024 --dir /tmp/x

#include <absl/flags/flag.h>
#include <absl/flags/parse.h>
#include <absl/strings/str_cat.h>
#include <ATen/ATen.h>
#include <tenax/checkpoint/engine.h>
#include <tenax/comm/init.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <vector>

#include "timing.h"

ABSL_FLAG(std::string, mode, "save", "save (on the launch's ranks) or reshard (one process)");
ABSL_FLAG(int64_t, mib, 1024, "state size in MiB over all ranks (16 tensors)");
ABSL_FLAG(int, reps, 3, "repetitions per measurement (median)");
ABSL_FLAG(std::string, dir, "/tmp/tenax-dcp-bench", "durable directory");
ABSL_FLAG(std::string, run, "dcp-bench", "run name");
ABSL_FLAG(bool, keep, false, "save: leave the last step in --dir (for --mode reshard)");
ABSL_FLAG(int, memory_slots, 2, "snapshots kept in memory per rank (CheckpointOptions)");
ABSL_FLAG(bool, peer, true, "copy every snapshot into a peer rank's memory (CheckpointOptions)");

using tenax::bench::Clock;
using tenax::bench::median;
using tenax::bench::seconds_since;

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  const int reps = absl::GetFlag(FLAGS_reps);
  const std::string dir = absl::GetFlag(FLAGS_dir), run = absl::GetFlag(FLAGS_run);
  tenax::World world = tenax::init();
  const int64_t rows = absl::GetFlag(FLAGS_mib) * (1 << 20) / 16 / 4;  // per whole tensor
  const int64_t mine = rows / world.size, first = mine * world.rank;

  tenax::StateDict state;
  std::vector<at::Tensor> tensors;
  for (int i = 0; i < 16; ++i) {
    tensors.push_back(at::rand({mine}));
    state.add_shard(absl::StrCat("t", i), tensors.back(), {mine * world.size}, {first});
  }
  tenax::CheckpointOptions o = tenax::CheckpointOptions::from_environment();
  o.run = run;
  o.durable = dir;
  o.persist_every = 1;
  o.keep_durable = 1;
  o.memory_slots = absl::GetFlag(FLAGS_memory_slots);
  o.peer = absl::GetFlag(FLAGS_peer);
  auto report = [&](const char* what, double s) {
    if (world.rank == 0) std::printf("tenax %s %.4f\n", what, s);
  };

  if (absl::GetFlag(FLAGS_mode) == "reshard") {
    std::vector<double> restore;
    for (int r = 0; r < reps; ++r) {
      tenax::CheckpointEngine::remove_memory(run);
      tenax::CheckpointEngine engine(o, world.comm, world.store);
      const auto t = Clock::now();
      auto res = engine.restore(state);
      restore.push_back(seconds_since(t));
      if (!res || res->tier != "durable" || !res->resharded) {
        std::fprintf(stderr, "tenax-dcp-bench: no resharded restore from %s\n", dir.c_str());
        return 1;
      }
    }
    report("reshard_load", median(restore));
    return 0;
  }

  tenax::CheckpointEngine::remove_memory(run);
  if (world.rank == 0) std::filesystem::remove_all(dir);
  world.comm->barrier();
  std::vector<double> stall, durable, load;
  int64_t step = 1;
  {
    tenax::CheckpointEngine engine(o, world.comm, world.store);
    for (int k = 0; k < o.memory_slots; ++k) {  // allocate and touch every slot
      engine.save(step++, state);
      engine.wait(std::chrono::minutes(30));
    }
    for (int r = 0; r < reps; ++r) {
      world.comm->barrier();
      const auto t = Clock::now();
      engine.save(step++, state);
      stall.push_back(seconds_since(t));
      engine.wait(std::chrono::minutes(30));
      world.comm->barrier();  // committed: every rank's parts and the manifest are written
      durable.push_back(seconds_since(t));
    }
  }
  for (int r = 0; r < reps; ++r) {
    tenax::CheckpointEngine::remove_memory(run);  // what a restart finds: the directory only
    world.comm->barrier();
    tenax::CheckpointEngine engine(o, world.comm, world.store);
    const auto t = Clock::now();
    auto res = engine.restore(state);
    world.comm->barrier();
    load.push_back(seconds_since(t));
    if (!res || res->tier != "durable") {
      std::fprintf(stderr, "tenax-dcp-bench: rank %d restored nothing from %s\n", world.rank,
                   dir.c_str());
      return 1;
    }
  }
  report("stall", median(stall));
  report("to_durable", median(durable));
  report("load", median(load));
  tenax::CheckpointEngine::remove_memory(run);
  world.comm->barrier();
  if (!absl::GetFlag(FLAGS_keep) && world.rank == 0) std::filesystem::remove_all(dir);
  return 0;
}
