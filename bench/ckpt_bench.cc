// Checkpoint engine costs, side by side with their references in one run (one process):
//   save stall         vs memcpy of the same bytes into already-touched memory
//   memory restore     vs memcpy (bandwidth ratio), and vs the durable tier's restore
//   durable persist    per tier: a local directory, and S3 when --s3 is given, where a
//                      parallel multipart upload is compared with a single PUT stream
//   step slowdown      a fixed-work compute step alone, followed by save(), and followed by
//                      save() with background persistence every save, in alternating rounds
// Prints one table; medians over --reps (rounds of 6 steps each for the step slowdown).
// --device cuda[:N] puts the state in device memory: the reference is then a plain
// device-to-host copy of the same bytes into touched host memory; --stall_only stops after the
// save stall (the GPU check).

#include <absl/flags/flag.h>
#include <absl/flags/parse.h>
#include <absl/strings/str_cat.h>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <dlfcn.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <vector>

#include "tenax/checkpoint/engine.h"
#include "tenax/tenax.h"
#include "timing.h"

ABSL_FLAG(int64_t, mib, 1024, "state size in MiB (16 tensors)");
ABSL_FLAG(int, reps, 5, "repetitions per measurement (median)");
ABSL_FLAG(std::string, dir, "/tmp/tenax-ckpt-bench", "durable directory");
ABSL_FLAG(std::string, s3, "", "also persist to this s3://bucket/prefix (AWS environment)");
ABSL_FLAG(int, parallel_parts, 4, "S3 parts in flight for the multipart comparison");
ABSL_FLAG(int64_t, part_mib, 32, "object / part size in MiB");
ABSL_FLAG(int, step_ms, 200, "compute per training step in the slowdown measurement");
ABSL_FLAG(int, step_threads, 1, "threads of that compute (ATen and BLAS)");
ABSL_FLAG(std::string, device, "cpu", "where the state lives: cpu or cuda[:N]");
ABSL_FLAG(bool, stall_only, false, "measure the save stall and its reference only");

namespace {

using tenax::bench::Clock;
using tenax::bench::median;
using tenax::bench::seconds_since;

// A stand-in for a training step's compute: a fixed number of matmuls (a fixed amount of
// work, so background threads that take CPU from it show as a longer step).
void compute(const at::Tensor& a, int64_t matmuls) {
  for (int64_t k = 0; k < matmuls; ++k) at::mm(a, a);
}

// The number of matmuls that take about `ms` here (median of 5 timings of 50).
int64_t matmuls_for(const at::Tensor& a, int ms) {
  std::vector<double> per;
  for (int k = 0; k < 5; ++k) {
    auto t = Clock::now();
    compute(a, 50);
    per.push_back(std::chrono::duration<double>(Clock::now() - t).count() / 50);
  }
  return std::max<int64_t>(1, static_cast<int64_t>(ms / 1e3 / median(per)));
}

}  // namespace

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  const int64_t mib = absl::GetFlag(FLAGS_mib);
  const int reps = absl::GetFlag(FLAGS_reps);
  const std::string dir = absl::GetFlag(FLAGS_dir);
  tenax::World world = tenax::init();

  // The state: 16 float32 tensors, mib MiB in all.
  tenax::StateDict state;
  std::vector<at::Tensor> tensors;
  const int64_t per = mib * (1 << 20) / 16 / 4;
  const at::Device device(absl::GetFlag(FLAGS_device));
  for (int i = 0; i < 16; ++i) {
    tensors.push_back(at::rand({per}, at::TensorOptions().device(device)));
    state.add(absl::StrCat("t", i), tensors.back());
  }
  const double bytes = double(state.tensor_bytes());

  // Reference: memcpy (from a device: a device-to-host copy) into already-touched memory.
  std::vector<char> dst(static_cast<size_t>(bytes));
  std::memset(dst.data(), 1, dst.size());
  std::vector<double> copy;
  for (int r = 0; r < reps; ++r) {
    auto t = Clock::now();
    size_t at = 0;
    for (auto& x : tensors) {
      if (x.is_cpu()) {
        std::memcpy(dst.data() + at, x.data_ptr(), x.nbytes());
      } else {
        at::from_blob(dst.data() + at, {x.numel()}, at::TensorOptions().dtype(x.dtype())).copy_(x);
      }
      at += x.nbytes();
    }
    copy.push_back(seconds_since(t));
  }
  const double memcpy_s = median(copy);
  const char* reference = device.is_cpu() ? "memcpy" : "device-to-host copy";

  auto run = [&](const std::string& run_name, tenax::CheckpointOptions& o) {
    o.run = run_name;
    tenax::CheckpointEngine::remove_memory(run_name);
    std::filesystem::remove_all(dir);
    return std::make_unique<tenax::CheckpointEngine>(o, world.comm, world.store);
  };

  // Save stall (memory tier only): the first save allocates and touches the slots.
  std::vector<double> stall;
  double first_save = 0, restore_s = 0;
  {
    tenax::CheckpointOptions o = tenax::CheckpointOptions::from_environment();
    auto engine = run("bench-mem", o);
    for (int r = 0; r <= reps; ++r) {
      auto t = Clock::now();
      engine->save(r + 1, state);
      const double s = seconds_since(t);
      if (r == 0) {
        first_save = s;
      } else {
        stall.push_back(s);
      }
      engine->wait();
    }
    std::vector<double> restores;
    for (int r = 0; r < reps; ++r) {
      auto t = Clock::now();
      engine->restore(state);
      restores.push_back(seconds_since(t));
    }
    restore_s = median(restores);
  }
  tenax::CheckpointEngine::remove_memory("bench-mem");
  const double gb = bytes / 1e9;
  // The table's head: the state, the reference copy and the save stall against it.
  auto print_stall = [&](const char* where) {
    std::printf("# state %.0f MiB in 16 tensors%s, %d reps, medians\n", bytes / (1 << 20), where,
                reps);
    std::printf("| measurement | seconds | GB/s | ratio |\n|---|---|---|---|\n");
    std::printf("| %s into touched memory (reference) | %.3f | %.2f | 1.00 |\n", reference,
                memcpy_s, gb / memcpy_s);
    std::printf("| save stall, memory tier | %.3f | %.2f | %.2f x %s time |\n", median(stall),
                gb / median(stall), median(stall) / memcpy_s, reference);
  };
  if (absl::GetFlag(FLAGS_stall_only)) {
    print_stall((" on " + device.str()).c_str());
    return 0;
  }

  // Durable tiers: time from save() to committed (wait), and restore from there.
  struct Tier {
    std::string name;
    double persist_s = 0, restore_s = 0;
  };
  std::vector<Tier> tiers;
  auto measure_durable = [&](const std::string& name, tenax::CheckpointOptions o) {
    o.persist_every = 1;
    o.keep_durable = 1;
    Tier tier{name};
    std::vector<double> persist, restore;
    for (int r = 0; r < reps; ++r) {
      // The second persist of an engine, as in training: the first one's slots and upload
      // buffers are allocated and touched by then.
      auto engine = run("bench-durable", o);
      engine->save(1, state);
      engine->wait(std::chrono::minutes(30));
      engine->save(2, state);
      auto t = Clock::now();
      engine->wait(std::chrono::minutes(30));
      persist.push_back(seconds_since(t));
      engine.reset();
      tenax::CheckpointEngine::remove_memory("bench-durable");
      auto reader = std::make_unique<tenax::CheckpointEngine>(o, world.comm, world.store);
      t = Clock::now();
      auto res = reader->restore(state);
      restore.push_back(seconds_since(t));
      if (!res || res->tier != "durable") std::fprintf(stderr, "restore from %s failed\n", name.c_str());
    }
    tier.persist_s = median(persist);
    tier.restore_s = median(restore);
    tiers.push_back(tier);
  };
  {
    tenax::CheckpointOptions o = tenax::CheckpointOptions::from_environment();
    o.durable = dir;
    measure_durable("directory", o);
  }
  const std::string s3 = absl::GetFlag(FLAGS_s3);
  if (!s3.empty()) {
    tenax::CheckpointOptions o = tenax::CheckpointOptions::from_environment();
    o.durable = s3;
    o.s3.part_bytes = absl::GetFlag(FLAGS_part_mib) << 20;
    o.s3.parallel_parts = absl::GetFlag(FLAGS_parallel_parts);
    measure_durable("s3 parallel x" + std::to_string(o.s3.parallel_parts), o);
    o.s3.parallel_parts = 1;
    o.s3.part_bytes = int64_t(5) << 30;  // one object, one PUT stream
    measure_durable("s3 single PUT", o);
  }

  // Step slowdown: compute alone; compute + save (memory tier); compute + save with the
  // durable tier persisting every save in the background.
  // The step computes on one thread (--step_threads), as a GPU trainer's host thread does:
  // the other cores are what the engine's background threads (commit checksums, persistence)
  // can use. BLAS has its own pool, sized apart from ATen's.
  const int step_threads = absl::GetFlag(FLAGS_step_threads);
  at::set_num_threads(step_threads);
  using SetThreads = void (*)(int);
  if (auto set = reinterpret_cast<SetThreads>(::dlsym(RTLD_DEFAULT, "openblas_set_num_threads"))) {
    set(step_threads);
  }
  at::Tensor a = at::rand({256, 256});
  const int step_ms = absl::GetFlag(FLAGS_step_ms);
  const int64_t matmuls = matmuls_for(a, step_ms);
  // The three kinds of step alternate in rounds of kBlock steps each, so that the machine's
  // drift over the run falls on all three alike; the persisting engine finishes its background
  // work before the next round's other steps.
  constexpr int kBlock = 6;
  // Per engine (0: memory tier only, 1: persisting every save): whole steps, and their parts.
  std::vector<double> plain, steps_in[2], compute_in[2], stall_in[2];
  std::unique_ptr<tenax::CheckpointEngine> engines[2];
  int64_t steps[2] = {1, 1};
  for (int variant = 0; variant < 2; ++variant) {
    tenax::CheckpointOptions o = tenax::CheckpointOptions::from_environment();
    if (variant == 1) {
      o.durable = dir;
      o.persist_every = 1;
    }
    engines[variant] = run("bench-step" + std::to_string(variant), o);
    engines[variant]->save(steps[variant]++, state);  // allocate the slots outside the measurement
    engines[variant]->wait(std::chrono::minutes(30));
  }
  for (int round = 0; round < reps; ++round) {
    for (int r = 0; r < kBlock; ++r) {  // no engine at work
      auto t = Clock::now();
      compute(a, matmuls);
      plain.push_back(seconds_since(t));
    }
    for (int variant = 0; variant < 2; ++variant) {
      auto& engine = engines[variant];
      for (int r = 0; r < kBlock; ++r) {
        auto t = Clock::now();
        compute(a, matmuls);
        const auto c = Clock::now();
        engine->save(steps[variant]++, state);
        steps_in[variant].push_back(seconds_since(t));
        compute_in[variant].push_back(std::chrono::duration<double>(c - t).count());
        stall_in[variant].push_back(seconds_since(c));
      }
      engine->wait(std::chrono::minutes(30));
    }
  }
  for (auto& engine : engines) engine.reset();
  tenax::CheckpointEngine::remove_memory("bench-step0");
  tenax::CheckpointEngine::remove_memory("bench-step1");
  tenax::CheckpointEngine::remove_memory("bench-durable");
  std::filesystem::remove_all(dir);

  print_stall("");
  std::printf("| first save (allocates and touches the slots) | %.3f | %.2f | %.2f x memcpy time |\n",
              first_save, gb / first_save, first_save / memcpy_s);
  std::printf("| restore, memory tier | %.3f | %.2f | %.2f of memcpy bandwidth |\n", restore_s,
              gb / restore_s, memcpy_s / restore_s);
  for (const auto& t : tiers) {
    std::printf("| persist, %s | %.3f | %.2f | |\n", t.name.c_str(), t.persist_s, gb / t.persist_s);
    std::printf("| restore, %s | %.3f | %.2f | memory tier %.1fx faster |\n", t.name.c_str(),
                t.restore_s, gb / t.restore_s, t.restore_s / restore_s);
  }
  if (tiers.size() == 3) {
    std::printf("| s3 parallel vs single PUT stream (persist) | | | %.2fx faster |\n",
                tiers[2].persist_s / tiers[1].persist_s);
  }
  std::printf("| training step, %d ms compute | %.3f | | 1.00 |\n", step_ms, median(plain));
  const double saved = median(steps_in[0]), persisted = median(steps_in[1]);
  std::printf("| step + save (memory tier) | %.3f | | %.3f |\n", saved, saved / median(plain));
  std::printf("| of which compute / save | %.3f / %.3f | | |\n", median(compute_in[0]),
              median(stall_in[0]));
  std::printf("| step + save, persisting every save in the background | %.3f | | %.3f "
              "(%.1f%% over step + save) |\n",
              persisted, persisted / median(plain), 100 * (persisted / saved - 1));
  std::printf("| of which compute / save | %.3f / %.3f | | |\n", median(compute_in[1]),
              median(stall_in[1]));
  return 0;
}
