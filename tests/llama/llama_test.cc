// The Llama example: presets, data loading, flag checking, and whole training runs under the
// launchers (mpirun, tenaxrun), against the real corpus prepared by the LlamaCorpus fixture.

#include <gtest/gtest.h>

#include <algorithm>
#include <csignal>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <regex>
#include <set>

#include "config.h"
#include "data.h"
#include "support/process.h"
#include "tenax/core/error.h"

using tenax::testing::dump;
using tenax::testing::run_command;
using tenax::testing::run_ranks;

namespace {

const std::string kTrain = std::string(LLAMA_CORPUS) + "/train.bin";
const std::map<std::string, std::string> kMpiEnv = {{"OMPI_ALLOW_RUN_AS_ROOT", "1"},
                                                    {"OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1"}};

TEST(PresetTest, ParameterCountsMatchThePublishedLlama3Models) {
  EXPECT_EQ(llama::parameter_count(llama::preset("llama3-1b")), 1'235'814'400);
  EXPECT_EQ(llama::parameter_count(llama::preset("llama3-8b")), 8'030'261'248);
  EXPECT_EQ(llama::parameter_count(llama::preset("llama3-70b")), 70'553'706'496);
}

TEST(PresetTest, UnknownPresetIsAConfigErrorListingTheNames) {
  try {
    llama::preset("huge");
    FAIL() << "no error";
  } catch (const tenax::ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("llama3-70b"), std::string::npos) << e.what();
  }
}

TEST(PresetTest, SeventyBillionReportsPerRankMemoryWithoutAllocatingIt) {
  auto r = run_command({LLAMA_TRAIN, "--preset", "llama3-70b", "--dp", "4", "--tp", "8", "--pp",
                        "8", "--report-memory"});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("70553706496 parameters"), std::string::npos) << r.output;
  // The last stage: 10 of the 80 layers with 1/8 of their matrices and whole norms
  // (10 x 106,971,136), 1/8 of the output table (131,334,144) and the final norm (8,192).
  EXPECT_NE(r.output.find("mesh dp=4 tp=8 pp=8: 1201053696 parameters"), std::string::npos)
      << r.output;
}

// The activation estimates --report-memory printed, in GiB, in its order: none, selective, full.
std::vector<double> activation_estimates_gib(const std::string& out) {
  std::vector<double> gib;
  const std::regex line(R"(activations, .* recompute \w+: +([0-9.]+) GiB)");
  for (std::sregex_iterator it(out.begin(), out.end(), line), end; it != end; ++it) {
    gib.push_back(std::stod((*it)[1]));
  }
  return gib;
}

// At 8k tokens a sequence, 70B's activations outgrow a device unless layers are recomputed;
// 8B fits an 80 GiB device with tensor parallelism alone.
TEST(PresetTest, TheMemoryReportNamesAMeshThatFitsEachDeviceSize) {
  auto big = run_command({LLAMA_TRAIN, "--preset", "llama3-70b", "--dp", "8", "--seq-len", "8192",
                          "--micro-batch", "1", "--report-memory"});
  ASSERT_EQ(big.exit_code, 0) << big.output;
  std::smatch m;
  ASSERT_TRUE(std::regex_search(
      big.output, m, std::regex(R"(fits 80 GiB: tp=(\d+) pp=(\d+) dp=8, recompute (\w+))")))
      << big.output;
  EXPECT_NE(m[3], "none") << big.output;
  EXPECT_TRUE(std::regex_search(big.output, std::regex(R"(fits 141 GiB: tp=\d+ pp=\d+ dp=8)")))
      << big.output;
  // Recomputation orders the activation estimates: none > selective > full.
  const std::vector<double> act = activation_estimates_gib(big.output);
  ASSERT_EQ(act.size(), 3u) << big.output;
  EXPECT_GT(act[0], act[1]);
  EXPECT_GT(act[1], act[2]);
  auto eight = run_command({LLAMA_TRAIN, "--preset", "llama3-8b", "--seq-len", "8192",
                            "--micro-batch", "1", "--report-memory"});
  ASSERT_EQ(eight.exit_code, 0) << eight.output;
  EXPECT_TRUE(std::regex_search(eight.output, std::regex(R"(fits 80 GiB: tp=\d+ pp=\d+ dp=1)")))
      << eight.output;
}

// Fully sharded over dp 8, 70B's weights, gradients and AdamW state are an eighth per rank
// (262.83 GiB of fp32 weights: 32.85 each), and an 80 GiB device needs a quarter of the
// model-parallel ranks that sharding AdamW alone needs (tp 2 x pp 2 instead of tp 2 x pp 8).
TEST(PresetTest, FullShardingDividesTheModelStateByDpAndNeedsLessModelParallelism) {
  auto report = [](std::vector<std::string> extra) {
    std::vector<std::string> argv = {LLAMA_TRAIN, "--preset", "llama3-70b", "--dp", "8",
                                     "--seq-len", "8192", "--micro-batch", "1", "--report-memory"};
    argv.insert(argv.end(), extra.begin(), extra.end());
    auto r = run_command(argv);
    EXPECT_EQ(r.exit_code, 0) << r.output;
    return r.output;
  };
  auto model_parallel = [](const std::string& out) {
    std::smatch m;
    if (!std::regex_search(out, m, std::regex(R"(fits 80 GiB: tp=(\d+) pp=(\d+) dp=8)"))) return 0;
    return std::stoi(m[1]) * std::stoi(m[2]);
  };
  const std::string plain = report({}), full = report({"--fsdp"});
  EXPECT_NE(plain.find("fully sharded over dp (--fsdp): weights 32.85 GiB + gradients 32.85 GiB "
                       "+ AdamW 65.71 GiB"),
            std::string::npos)
      << plain;
  EXPECT_NE(full.find("dp=8 fully sharded, recompute"), std::string::npos) << full;
  EXPECT_EQ(model_parallel(plain), 16) << plain;
  EXPECT_EQ(model_parallel(full), 4) << full;
}

// Sequence parallelism keeps 1/tp of the norm regions: at tp 2 the 8B preset's 32 layers
// save half of 4 fp32 tensors of 8192 x 4096 each, 8 GiB in all.
TEST(PresetTest, SequenceParallelismLowersTheActivationEstimateByTheNormRegionsShare) {
  auto report = [](std::vector<std::string> extra) {
    std::vector<std::string> argv = {LLAMA_TRAIN, "--preset",       "llama3-8b", "--tp",
                                     "2",         "--seq-len",      "8192",      "--micro-batch",
                                     "1",         "--report-memory"};
    argv.insert(argv.end(), extra.begin(), extra.end());
    auto r = run_command(argv);
    EXPECT_EQ(r.exit_code, 0) << r.output;
    auto gib = activation_estimates_gib(r.output);
    EXPECT_EQ(gib.size(), 3u) << r.output;
    return gib.size() == 3 ? gib : std::vector<double>(3, 0.0);
  };
  const auto plain = report({}), sp = report({"--sequence-parallel"});
  EXPECT_NEAR(plain[0] - sp[0], 8.0, 0.011);
  // With full recomputation only the layer inputs are kept: half of 32 x 8192 x 4096 x 4 bytes,
  // plus one layer's share of the recomputed set.
  EXPECT_NEAR(plain[2] - sp[2], 2.0 + 8.0 / 32, 0.011);
}

TEST(StageLayersTest, LayersSplitEvenlyWithTheFirstStagesTakingTheRemainder) {
  auto c = llama::preset("tiny");  // 4 layers
  c.layers = 5;
  EXPECT_EQ(llama::stage_layers(c, 0, 2).first, 0);
  EXPECT_EQ(llama::stage_layers(c, 0, 2).count, 3);
  EXPECT_EQ(llama::stage_layers(c, 1, 2).first, 3);
  EXPECT_EQ(llama::stage_layers(c, 1, 2).count, 2);
}

std::vector<std::vector<int64_t>> batch_tokens(const llama::SampleLoader& loader, int64_t cursor,
                                               int64_t global_batch, int dp) {
  std::vector<std::vector<int64_t>> out;
  for (int r = 0; r < dp; ++r) {
    for (int64_t id : llama::SampleLoader::rank_samples(cursor, global_batch, r, dp)) {
      std::vector<int64_t> tokens(loader.seq_len() + 1);
      loader.sample(id, tokens.data());
      out.push_back(tokens);
    }
  }
  return out;
}

TEST(LoaderTest, TheSameCursorGivesTheSameSamplesForWorldSizesOneTwoAndFour) {
  auto file = std::make_shared<llama::TokenFile>(kTrain);
  llama::SampleLoader loader(file, 64, 7);
  for (int64_t cursor : {int64_t(0), int64_t(16), loader.samples_per_epoch() - 3}) {
    auto one = batch_tokens(loader, cursor, 16, 1);
    EXPECT_EQ(batch_tokens(loader, cursor, 16, 2), one) << "cursor " << cursor;
    EXPECT_EQ(batch_tokens(loader, cursor, 16, 4), one) << "cursor " << cursor;
  }
}

TEST(LoaderTest, AFreshLoaderResumesMidEpochWithTheSamplesTheRunningOneWouldRead) {
  auto file = std::make_shared<llama::TokenFile>(kTrain);
  llama::SampleLoader running(file, 64, 7);
  const int64_t resume = 37 * 16;  // a cursor inside the first epoch
  std::vector<std::vector<int64_t>> continued;
  for (int64_t c = 0; c < resume + 3 * 16; c += 16) {
    auto b = batch_tokens(running, c, 16, 2);
    if (c >= resume) continued.insert(continued.end(), b.begin(), b.end());
  }
  llama::SampleLoader restarted(file, 64, 7);
  std::vector<std::vector<int64_t>> fresh;
  for (int64_t c = resume; c < resume + 3 * 16; c += 16) {
    auto b = batch_tokens(restarted, c, 16, 4);
    fresh.insert(fresh.end(), b.begin(), b.end());
  }
  EXPECT_EQ(fresh, continued);
}

TEST(LoaderTest, AnEpochVisitsEveryWindowOnceAndTheNextEpochInAnotherOrder) {
  // A small file of distinct tokens: the first token of a sample names its window.
  auto path = std::filesystem::temp_directory_path() / ("llama_loader_" + std::to_string(getpid()));
  std::vector<uint16_t> tokens(8 * 10 + 1);
  for (size_t i = 0; i < tokens.size(); ++i) tokens[i] = static_cast<uint16_t>(i);
  std::ofstream(path, std::ios::binary)
      .write(reinterpret_cast<const char*>(tokens.data()), tokens.size() * 2);
  llama::SampleLoader loader(std::make_shared<llama::TokenFile>(path.string()), 8, 3);
  ASSERT_EQ(loader.samples_per_epoch(), 10);
  std::vector<int64_t> epoch0, epoch1;
  std::vector<int64_t> s(9);
  for (int64_t i = 0; i < 20; ++i) {
    loader.sample(i, s.data());
    EXPECT_EQ(s[0] % 8, 0);
    EXPECT_EQ(s[8], s[0] + 8);  // the target of the last position is the next token
    (i < 10 ? epoch0 : epoch1).push_back(s[0] / 8);
  }
  EXPECT_EQ(std::set<int64_t>(epoch0.begin(), epoch0.end()).size(), 10u);
  EXPECT_EQ(std::set<int64_t>(epoch1.begin(), epoch1.end()).size(), 10u);
  EXPECT_NE(epoch0, epoch1);
  std::filesystem::remove(path);
}

TEST(LoaderTest, MissingOrTruncatedTokenFilesAreConfigErrorsNamingTheFile) {
  try {
    llama::TokenFile f("/nonexistent/train.bin");
    FAIL() << "no error";
  } catch (const tenax::ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("/nonexistent/train.bin"), std::string::npos);
  }
  auto path = std::filesystem::temp_directory_path() / ("llama_odd_" + std::to_string(getpid()));
  std::ofstream(path, std::ios::binary).write("abc", 3);
  EXPECT_THROW(llama::TokenFile(path.string(), 2), tenax::ConfigError);
  std::filesystem::remove(path);
}

TEST(PrepareTest, FortuneEntriesBecomeDocumentsAndEveryNthGoesToValidation) {
  auto dir = std::filesystem::temp_directory_path() / ("llama_prep_" + std::to_string(getpid()));
  std::filesystem::create_directories(dir / "in");
  std::ofstream(dir / "in" / "quotes") << "one\n%\ntwo\n%\nthree\n%\nfour\n";
  auto r = llama::prepare_byte_corpus({(dir / "in").string()}, (dir / "out").string(), 2);
  EXPECT_EQ(r.documents, 4);
  EXPECT_EQ(r.train_tokens, int64_t(std::string("one\n\nthree\n\n").size()));
  EXPECT_EQ(r.val_tokens, int64_t(std::string("two\n\nfour\n\n").size()));
  llama::TokenFile val((dir / "out" / "val.bin").string());
  EXPECT_EQ(val.at(0), 't');
  std::filesystem::remove_all(dir);
}

// Bad flags: one message (from rank 0 only) and exit code 2, before any rank starts work.
void expect_flag_error(const std::vector<std::string>& flags, const std::string& message) {
  std::vector<std::string> argv = {"mpirun", "--oversubscribe", "-np", "2", LLAMA_TRAIN,
                                   "--data", kTrain};
  argv.insert(argv.end(), flags.begin(), flags.end());
  auto r = run_command(argv, kMpiEnv, std::chrono::seconds(60));
  EXPECT_NE(r.exit_code, 0) << r.output;
  size_t at = r.output.find(message);
  ASSERT_NE(at, std::string::npos) << r.output;
  EXPECT_EQ(r.output.find(message, at + 1), std::string::npos) << "said twice:\n" << r.output;
  EXPECT_EQ(r.output.find("step "), std::string::npos) << r.output;
}

TEST(FlagTest, TensorParallelSizeNotDividingTheHeadsIsOneClearMessage) {
  expect_flag_error({"--tp", "2", "--preset", "small", "--dp", "1", "--tp=3"},
                    "--tp 3 does not divide the heads (8) of preset small");
}

TEST(FlagTest, GlobalBatchNotDivisibleByMicroBatchTimesDpIsOneClearMessage) {
  expect_flag_error({"--global-batch", "10", "--micro-batch", "4"},
                    "--global-batch 10 is not divisible by --micro-batch 4 x dp 2 = 8");
}

TEST(FlagTest, MissingDataFileIsOneClearMessage) {
  expect_flag_error({"--data", "/nonexistent/tokens.bin"},
                    "--data: token file /nonexistent/tokens.bin does not exist");
}

TEST(FlagTest, VirtualStagesWithoutAPipelineOrWithMicroBatchesPDoesNotDivideAreClearMessages) {
  expect_flag_error({"--virtual-stages", "2"},
                    "--virtual-stages 2 interleaves the 1f1b schedule: it needs --pp 2 or more");
  expect_flag_error(
      {"--pp", "2", "--virtual-stages", "2", "--global-batch", "12", "--micro-batch", "4"},
      "--virtual-stages needs the micro-batches of a batch (--global-batch 12 / "
      "(--micro-batch 4 x dp 1) = 3) divisible by --pp 2");
  expect_flag_error({"--pp", "2", "--virtual-stages", "3"},
                    "--pp 2 x --virtual-stages 3 exceeds the 4 layers of preset tiny");
  expect_flag_error({"--tp", "2", "--sequence-parallel", "--seq-len", "101"},
                    "--sequence-parallel splits the sequence over tp: --seq-len 101 is not "
                    "divisible by --tp 2");
}

TEST(FlagTest, FsdpWithTheDistributedOptimizerIsOneClearMessage) {
  expect_flag_error({"--fsdp", "--distributed-optimizer"},
                    "--fsdp shards the optimizer state already: drop --distributed-optimizer");
}

TEST(FlagTest, MeshThatDoesNotFitTheRanksIsOneClearMessage) {
  expect_flag_error({"--dp", "2", "--tp", "2"}, "--dp 2 x --tp 2 x --pp 1 = 4 but there are 2 ranks");
}

// A whole training run's log: the losses of the step lines and the validation lines.
struct Log {
  std::vector<double> train, val;
};
Log parse(const std::string& out) {
  Log log;
  std::regex train(R"(step +\d+/\d+ \| loss ([0-9.]+))"), val(R"(validation loss ([0-9.]+))");
  for (std::sregex_iterator it(out.begin(), out.end(), train), end; it != end; ++it) {
    log.train.push_back(std::stod((*it)[1]));
  }
  for (std::sregex_iterator it(out.begin(), out.end(), val), end; it != end; ++it) {
    log.val.push_back(std::stod((*it)[1]));
  }
  return log;
}

TEST(TrainTest, MpirunFourRanksDp2Tp2OnTheCorpusBringsTheLossFromLn256ToBelow2Point5) {
  auto r = run_command({"mpirun", "--oversubscribe", "-np", "4", LLAMA_TRAIN, "--data", kTrain,
                        "--dp", "2", "--tp", "2", "--steps", "150", "--log-interval", "10",
                        "--eval-interval", "150"},
                       kMpiEnv, std::chrono::seconds(400));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  Log log = parse(r.output);
  ASSERT_GE(log.train.size(), 10u) << r.output;
  EXPECT_NEAR(log.train.front(), std::log(256.0), 0.3) << r.output;  // uniform over bytes
  EXPECT_LT(log.train.back(), 2.5) << r.output;
  ASSERT_EQ(log.val.size(), 1u) << r.output;
  EXPECT_LT(log.val.back(), 2.5) << r.output;
  EXPECT_NE(r.output.find("4 ranks (mpirun): dp=2 tp=2 pp=1"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("+ comm "), std::string::npos) << r.output;
}

TEST(TrainTest, TenaxrunTwoRanksPipelineTrainsAndEndsCleanly) {
  auto r = run_command({TENAXRUN, "--nproc-per-node", "2", LLAMA_TRAIN, "--data", kTrain,
                        "--pp", "2", "--pp-schedule", "gpipe", "--steps", "12", "--warmup", "2",
                        "--log-interval", "4", "--eval-interval", "12", "--eval-batches", "2"},
                       {}, std::chrono::seconds(200));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  Log log = parse(r.output);
  ASSERT_GE(log.train.size(), 3u) << r.output;
  EXPECT_LT(log.train.back(), log.train.front() - 1.0) << r.output;
  EXPECT_EQ(log.val.size(), 1u) << r.output;
  EXPECT_NE(r.output.find("2 ranks (tenaxrun): dp=1 tp=1 pp=2 gpipe"), std::string::npos)
      << r.output;
}

TEST(TrainTest, OneProcessWithNoLauncherTrains) {
  auto r = run_command({LLAMA_TRAIN, "--data", kTrain, "--steps", "6", "--warmup", "2",
                        "--log-interval", "3", "--eval-interval", "0"},
                       {}, std::chrono::seconds(200));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("1 ranks (single)"), std::string::npos) << r.output;
  EXPECT_EQ(parse(r.output).train.size(), 3u) << r.output;
}

// Peak resident memory of a one-process run with long sequences, where the attention tensors
// ([batch, heads, seq, seq] per layer) dominate what a step keeps for backward.
double peak_mib(const std::string& recompute, std::string* loss) {
  auto r = run_command({LLAMA_TRAIN, "--data", kTrain, "--steps", "2", "--warmup", "1", "--seq-len",
                        "512", "--micro-batch", "8", "--global-batch", "8", "--log-interval", "1",
                        "--eval-interval", "0", "--recompute", recompute},
                       {}, std::chrono::seconds(200));
  EXPECT_EQ(r.exit_code, 0) << r.output;
  std::smatch m;
  if (std::regex_search(r.output, m, std::regex(R"(step +2/2 \| loss ([0-9.]+))"))) *loss = m[1];
  if (!std::regex_search(r.output, m, std::regex(R"(peak resident memory ([0-9]+) MiB)"))) {
    ADD_FAILURE() << r.output;
    return 0;
  }
  return std::stod(m[1]);
}

TEST(RecomputeRunTest, FullAndSelectiveRecomputationLowerThePeakMemoryAndKeepTheLoss) {
  std::string none_loss, full_loss, selective_loss;
  const double none = peak_mib("none", &none_loss);
  const double full = peak_mib("full", &full_loss);
  const double selective = peak_mib("selective", &selective_loss);
  std::printf("peak resident memory: none %.0f MiB, selective %.0f MiB, full %.0f MiB\n", none,
              selective, full);
  // Without recomputation each of the 4 layers keeps its softmax output, [8, 4, 512, 512] fp32
  // = 32 MiB, for backward (selective drops those); full keeps only each layer's input.
  EXPECT_LT(selective, none - 48);
  EXPECT_LT(full, selective - 64);
  EXPECT_FALSE(none_loss.empty());
  EXPECT_EQ(full_loss, none_loss);
  EXPECT_EQ(selective_loss, none_loss);
  // --report-memory's estimate of what full recomputation saves is the measured saving, within
  // a quarter.
  auto report = run_command({LLAMA_TRAIN, "--seq-len", "512", "--micro-batch", "8",
                             "--global-batch", "8", "--report-memory"});
  ASSERT_EQ(report.exit_code, 0) << report.output;
  std::vector<double> est = activation_estimates_gib(report.output);
  for (double& e : est) e *= 1024;  // MiB
  ASSERT_EQ(est.size(), 3u) << report.output;
  std::printf("estimated saving of full recomputation %.0f MiB, measured %.0f MiB\n",
              est[0] - est[2], none - full);
  EXPECT_NEAR(est[0] - est[2], none - full, 0.25 * (none - full)) << report.output;
}

// Mixed precision: bf16 forward passes over fp32 master weights train the tiny preset to the
// same loss as fp32, within 2% after 200 steps.
// A batch of 4 sequences: on a CPU without bf16 instructions (AVX2 only) LibTorch emulates bf16,
// about 11x the fp32 step, and 200 steps of the default batch of 16 would take over 12 minutes.
TEST(MixedPrecisionRunTest, Bf16ReachesTheLossOfFp32After200StepsWithinTwoPercent) {
  auto loss_after = [](const std::string& dtype) {
    auto r = run_command({LLAMA_TRAIN, "--data", kTrain, "--steps", "200", "--log-interval", "100",
                          "--eval-interval", "0", "--global-batch", "4", "--micro-batch", "4",
                          "--dtype", dtype},
                         {}, std::chrono::seconds(450));
    EXPECT_EQ(r.exit_code, 0) << r.output;
    std::smatch m;
    if (!std::regex_search(r.output, m, std::regex(R"(step +200/200 \| loss ([0-9.]+))"))) {
      ADD_FAILURE() << r.output;
      return 0.0;
    }
    return std::stod(m[1]);
  };
  const double fp32 = loss_after("fp32"), bf16 = loss_after("bf16");
  std::printf("loss after 200 steps: fp32 %.4f, bf16 %.4f\n", fp32, bf16);
  EXPECT_LT(fp32, 3.0);  // it trained
  EXPECT_NEAR(bf16, fp32, 0.02 * fp32);
}

TEST(MixedPrecisionRunTest, AnUnknownOrUnsupportedDtypeIsOneClearMessage) {
  auto r = run_command({LLAMA_TRAIN, "--data", kTrain, "--dtype", "fp16"});
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find("--dtype fp16 computes on CUDA only (the CPU's autocast is bf16 only)"),
            std::string::npos)
      << r.output;
  r = run_command({LLAMA_TRAIN, "--data", kTrain, "--loss-scale", "lots"});
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find("--loss-scale 'lots': expected none, dynamic or a positive number"),
            std::string::npos)
      << r.output;
  r = run_command(
      {LLAMA_TRAIN, "--data", kTrain, "--loss-scale", "dynamic", "--loss-scale-window", "0"});
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find("--loss-scale-window 0: expected at least 1"), std::string::npos)
      << r.output;
  r = run_command({LLAMA_TRAIN, "--data", kTrain, "--reduce-dtype", "int8"});
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find("--reduce-dtype: 'int8' is not one of fp32, bf16, fp16"),
            std::string::npos)
      << r.output;
}

// Faults injected with TENAX_FAULT into real training runs.
std::vector<std::string> short_run(int steps) {
  return {LLAMA_TRAIN, "--data", kTrain, "--steps", std::to_string(steps), "--warmup", "2",
          "--log-interval", "1", "--eval-interval", "0"};
}

// Every loss and gradient norm rank 0 logged, in order.
std::vector<std::string> logged_steps(const std::string& out) {
  std::vector<std::string> v;
  std::regex re(R"(step +\d+/\d+ \| loss [0-9.]+ \| lr [^|]+\| grad norm [0-9.]+)");
  for (auto it = std::sregex_iterator(out.begin(), out.end(), re); it != std::sregex_iterator();
       ++it) {
    v.push_back(it->str());
  }
  return v;
}

// A power-of-two loss scale changes no gradient's bits: scaled training is the unscaled one,
// through data-parallel averaging and through a pipeline's micro-batch losses alike.
TEST(LossScaleRunTest, AStaticPowerOfTwoScaleTrainsExactlyAsNoScale) {
  for (const char* mesh : {"--dp", "--pp"}) {
    auto run = [&](const char* scale) {
      std::vector<std::string> argv = short_run(12);
      argv.insert(argv.end(), {mesh, "2", "--loss-scale", scale});
      auto results = run_ranks(2, argv, {}, std::chrono::seconds(120));
      for (const auto& r : results) EXPECT_EQ(r.exit_code, 0) << dump(results);
      return results[0].output;
    };
    const std::string plain = run("none"), scaled = run("4096");
    EXPECT_EQ(logged_steps(plain).size(), 12u) << mesh << "\n" << plain;
    EXPECT_EQ(logged_steps(scaled), logged_steps(plain)) << mesh << "\n" << scaled;
    EXPECT_NE(scaled.find("loss scale 4096 | overflowed 0 of 1 steps"), std::string::npos)
        << scaled;
  }
}

// A scale too large for fp32 overflows the first steps: each is skipped on every rank, the
// scale halves until it fits, and training goes on from there.
TEST(LossScaleRunTest, ADynamicScaleBacksOffFromOverflowsAndTrains) {
  std::vector<std::string> argv = short_run(30);
  argv.insert(argv.end(), {"--dp", "2", "--loss-scale", "dynamic", "--initial-loss-scale",
                           "1.0889e40"});  // 2^133
  auto results = run_ranks(2, argv, {}, std::chrono::seconds(120));
  for (const auto& r : results) EXPECT_EQ(r.exit_code, 0) << dump(results);
  const std::string& out = results[0].output;
  std::regex re(R"(step (\d+): gradients overflowed at loss scale ([0-9.e+]+): update skipped)");
  int overflows = 0, last = 0;
  for (auto it = std::sregex_iterator(out.begin(), out.end(), re); it != std::sregex_iterator();
       ++it, ++overflows) {
    last = std::stoi((*it)[1]);
    EXPECT_EQ(last, overflows + 1) << out;  // the first steps, one after another
  }
  EXPECT_GE(overflows, 3) << out;  // 2^133, 2^132, 2^131 × a loss of about 1.4 overflow fp32
  EXPECT_LE(overflows, 8) << out;
  // Every rank skipped the same steps.
  EXPECT_NE(results[1].output.find("step 1: gradients overflowed"), std::string::npos)
      << results[1].output;
  std::smatch m;
  ASSERT_TRUE(std::regex_search(out, m, std::regex(R"(step +30/30 \| loss ([0-9.]+))"))) << out;
  EXPECT_LT(std::stod(m[1]), 3.6) << out;  // it trained: from 5.7
  EXPECT_NE(out.find("done, 30 steps"), std::string::npos) << out;
}

TEST(FaultInjectionTest, AKilledRankIsNamedByTheSurvivorWithinTheStep) {
  auto results = run_ranks(2, short_run(10), {{"TENAX_FAULT", "kill@4:rank=1"}},
                           std::chrono::seconds(120));
  EXPECT_EQ(results[1].exit_code, 128 + SIGKILL) << dump(results);
  EXPECT_NE(results[1].output.find("fault injection: kill rank 1 at step 4"), std::string::npos)
      << dump(results);
  EXPECT_EQ(results[0].exit_code, 1) << dump(results);
  EXPECT_NE(results[0].output.find("rank 1 of communicator"), std::string::npos) << dump(results);
  EXPECT_NE(results[0].output.find("is gone"), std::string::npos) << dump(results);
  EXPECT_NE(results[0].output.find("step     3/10"), std::string::npos) << dump(results);
  EXPECT_EQ(results[0].output.find("step     4/10"), std::string::npos) << dump(results);
}

TEST(FaultInjectionTest, AHungRankTimesTheOthersOutNamingIt) {
  auto results = run_ranks(2, short_run(10),
                           {{"TENAX_FAULT", "hang@3:rank=1"}, {"TENAX_TIMEOUT", "3"}},
                           std::chrono::seconds(120), /*stuck_rank=*/1);
  EXPECT_EQ(results[0].exit_code, 1) << dump(results);
  EXPECT_NE(results[0].output.find("timed out"), std::string::npos) << dump(results);
  EXPECT_NE(results[0].output.find("waiting on rank(s) 1"), std::string::npos) << dump(results);
}

TEST(FaultInjectionTest, ASlowRankShowsAsCommunicationTimeOnTheOthers) {
  auto results = run_ranks(2, short_run(6), {{"TENAX_FAULT", "slow=1000:rank=1"}},
                           std::chrono::seconds(120));
  for (const auto& r : results) ASSERT_EQ(r.exit_code, 0) << dump(results);
  // Rank 0 waits for rank 1 in the gradient all-reduce: most of the 1000 ms rank 1 sleeps,
  // less the compute rank 0 does meanwhile (a few hundred ms, up to 700 when another test
  // shares the two cores). The median over steps 2-6, so one loaded step does not decide.
  std::regex comm(R"(step +[2-6]/6 .*\+ comm ([0-9.]+) \+)");
  std::vector<double> waits;
  const std::string& out = results[0].output;
  for (std::sregex_iterator it(out.begin(), out.end(), comm), end; it != end; ++it) {
    waits.push_back(std::stod((*it)[1]));
  }
  ASSERT_EQ(waits.size(), 5u) << dump(results);
  std::sort(waits.begin(), waits.end());
  EXPECT_GT(waits[2], 400.0) << dump(results);
}

TEST(FaultInjectionTest, ABadFaultSpecIsOneClearMessage) {
  auto r = run_command(short_run(3), {{"TENAX_FAULT", "explode@3"}});
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("TENAX_FAULT: 'explode@3': unknown fault"), std::string::npos) << r.output;
}

// The final loss line "step 20/20 | loss X" of a run.
std::string final_loss(const std::string& out) {
  std::smatch m;
  std::regex re(R"(step +20/20 \| loss ([0-9.]+))");
  return std::regex_search(out, m, re) ? m[1].str() : "none";
}

void remove_regions(const std::string& run) {
  for (const auto& e : std::filesystem::directory_iterator("/dev/shm")) {
    if (e.path().filename().string().rfind("tenax-" + run + "-", 0) == 0) {
      std::filesystem::remove(e.path());
    }
  }
}

// The step and loss-scale lines rank 0 logged after step `after`.
std::vector<std::string> step_lines_after(const std::string& out, int after) {
  std::vector<std::string> v;
  std::istringstream in(out);
  std::string line;
  bool past = false;
  std::regex step_re(R"(^step +(\d+)/\d+ \| loss [0-9.]+ \| lr [^|]+\| grad norm [0-9.inf]+)");
  std::smatch m;
  while (std::getline(in, line)) {
    if (std::regex_search(line, m, step_re)) {
      past = std::stoi(m[1]) > after;
      if (past) v.push_back(m.str());
    } else if (past && line.rfind("  ", 0) == 0 &&
               line.find_first_not_of(' ') == line.find("loss scale ")) {
      v.push_back(line);
    }
  }
  return v;
}

// The scale and its run of finite steps are checkpointed: a resumed run goes on with them, as
// if never stopped (a fresh scale would overflow again at its first step).
TEST(LossScaleRunTest, AResumedRunGoesOnWithTheCheckpointedScale) {
  const std::string run = "lscale" + std::to_string(getpid());
  std::vector<std::string> argv = short_run(20);
  argv.insert(argv.end(), {"--loss-scale", "dynamic", "--initial-loss-scale",
                           "1.0889035741470031e40", "--loss-scale-window", "3"});
  auto with = [&](std::vector<std::string> extra) {
    std::vector<std::string> a = argv;
    a.insert(a.end(), extra.begin(), extra.end());
    return run_command(a, {}, std::chrono::seconds(120));
  };
  auto whole = with({});
  ASSERT_EQ(whole.exit_code, 0) << whole.output;
  auto first = with({"--ckpt-every", "5", "--ckpt-run", run, "--exit-after", "10"});
  ASSERT_EQ(first.exit_code, 0) << first.output;
  auto again = with({"--ckpt-every", "5", "--ckpt-run", run});
  remove_regions(run);
  ASSERT_EQ(again.exit_code, 0) << again.output;
  EXPECT_NE(again.output.find("resumed at step 10 from the memory tier"), std::string::npos)
      << again.output;
  const auto expected = step_lines_after(whole.output, 10);
  EXPECT_EQ(expected.size(), 20u) << whole.output;  // ten steps, each with its scale line
  EXPECT_EQ(step_lines_after(again.output, 10), expected) << again.output;
}

TEST(CheckpointResumeTest, APreemptedRunResumedFromMemoryOrReshardedFromDiskEndsWithTheSameLoss) {
  const std::string run = "resume" + std::to_string(getpid());
  const std::string durable = std::filesystem::temp_directory_path() / ("tenax-llama-" + run);
  auto train = [&](int n, std::vector<std::string> extra) {
    std::vector<std::string> argv = {"mpirun", "--oversubscribe", "-np", std::to_string(n),
                                     LLAMA_TRAIN, "--data", kTrain, "--steps", "20",
                                     "--log-interval", "10", "--eval-interval", "0"};
    argv.insert(argv.end(), extra.begin(), extra.end());
    return run_command(argv, kMpiEnv, std::chrono::seconds(300));
  };
  auto plain = train(2, {});
  ASSERT_EQ(plain.exit_code, 0) << plain.output;
  const std::string expected = final_loss(plain.output);
  // Preempted after 10 steps, with checkpoints every 5 in memory and every 10th in a directory.
  auto first = train(2, {"--ckpt-every", "5", "--ckpt-run", run, "--ckpt-durable", durable,
                         "--ckpt-persist-every", "2", "--exit-after", "10"});
  ASSERT_EQ(first.exit_code, 0) << first.output;
  EXPECT_NE(first.output.find("leaving after step 10"), std::string::npos) << first.output;
  // Restarted on the same ranks: from shared memory, no I/O.
  auto again = train(2, {"--ckpt-every", "5", "--ckpt-run", run});
  ASSERT_EQ(again.exit_code, 0) << again.output;
  EXPECT_NE(again.output.find("resumed at step 10 from the memory tier"), std::string::npos)
      << again.output;
  EXPECT_EQ(final_loss(again.output), expected) << again.output;
  // The host's memory is gone; restarted as dp=2 x tp=2: from the directory, resharded.
  remove_regions(run);
  auto moved = train(4, {"--tp", "2", "--ckpt-every", "5", "--ckpt-run", run, "--ckpt-durable",
                         durable});
  ASSERT_EQ(moved.exit_code, 0) << moved.output;
  EXPECT_NE(moved.output.find("resumed at step 10 from the durable tier"), std::string::npos)
      << moved.output;
  EXPECT_NE(moved.output.find("resharded"), std::string::npos) << moved.output;
  EXPECT_EQ(final_loss(moved.output), expected) << moved.output;
  remove_regions(run);
  std::filesystem::remove_all(durable);
}

// A fully sharded run saves each rank's rows of every weight and moment; the checkpoint restores
// on another mesh, sharded (dp 2 x tp 2) or not (one process), and the run ends where the
// uninterrupted unsharded run does.
TEST(CheckpointResumeTest, AFullyShardedCheckpointReshardsOntoOtherMeshesWithAndWithoutFsdp) {
  const std::string run = "fsdpresume" + std::to_string(getpid());
  const std::string durable = std::filesystem::temp_directory_path() / ("tenax-llama-" + run);
  auto train = [&](int n, std::vector<std::string> extra) {
    std::vector<std::string> argv = {"mpirun",    "--oversubscribe", "-np",  std::to_string(n),
                                     LLAMA_TRAIN, "--data",          kTrain, "--steps",
                                     "20",        "--log-interval",  "10",   "--eval-interval",
                                     "0"};
    argv.insert(argv.end(), extra.begin(), extra.end());
    return run_command(argv, kMpiEnv, std::chrono::seconds(300));
  };
  auto plain = train(2, {});
  ASSERT_EQ(plain.exit_code, 0) << plain.output;
  const std::string expected = final_loss(plain.output);
  auto first = train(2, {"--fsdp", "--ckpt-every", "5", "--ckpt-run", run, "--ckpt-durable",
                         durable, "--ckpt-persist-every", "2", "--exit-after", "10"});
  ASSERT_EQ(first.exit_code, 0) << first.output;
  remove_regions(run);
  for (auto [n, mesh] :
       {std::pair<int, std::vector<std::string>>{4, {"--tp", "2", "--fsdp"}}, {1, {}}}) {
    std::vector<std::string> extra = {"--ckpt-every",   "5",     "--ckpt-run",           run,
                                      "--ckpt-durable", durable, "--ckpt-persist-every", "100"};
    extra.insert(extra.end(), mesh.begin(), mesh.end());
    auto moved = train(n, extra);
    remove_regions(run);
    ASSERT_EQ(moved.exit_code, 0) << moved.output;
    EXPECT_NE(moved.output.find("resumed at step 10 from the durable tier"), std::string::npos)
        << moved.output;
    EXPECT_EQ(final_loss(moved.output), expected) << moved.output;
  }
  std::filesystem::remove_all(durable);
}

// One optimizer step (two, in fact) on a mesh equals the one-process step, weights and loss.
void expect_matches_one_process(int n, const std::vector<std::string>& mesh) {
  std::vector<std::string> argv = {LLAMA_WORKER, kTrain};
  argv.insert(argv.end(), mesh.begin(), mesh.end());
  auto results = run_ranks(n, argv);
  for (const auto& r : results) {
    EXPECT_EQ(r.exit_code, 0) << dump(results);
    EXPECT_NE(r.output.find("PASS llama"), std::string::npos) << dump(results);
  }
}

TEST(StepTest, Dp2Tp2StepEqualsTheOneProcessStep) { expect_matches_one_process(4, {"2", "2", "1"}); }
TEST(StepTest, Tp2Pp2OneFOneBStepEqualsTheOneProcessStep) {
  expect_matches_one_process(4, {"1", "2", "2", "1f1b"});
}
TEST(StepTest, Dp2Pp2GPipeStepEqualsTheOneProcessStep) {
  expect_matches_one_process(4, {"2", "1", "2", "gpipe"});
}
// Recomputation runs the tensor-parallel collectives again in backward, inside data-parallel
// gradient hooks and pipeline stages: the step is still the one-process step without it.
TEST(StepTest, Dp2Tp2WithFullRecomputationStepEqualsTheOneProcessStep) {
  expect_matches_one_process(4, {"2", "2", "1", "1f1b", "full"});
}
TEST(StepTest, Tp2Pp2WithSelectiveRecomputationStepEqualsTheOneProcessStep) {
  expect_matches_one_process(4, {"1", "2", "2", "1f1b", "selective"});
}
// Interleaved 1F1B: two model chunks a rank (virtual stages 0..3 of the 4 layers), the
// micro-batches through them in groups of pp.
TEST(StepTest, Dp2Pp2InterleavedStepEqualsTheOneProcessStep) {
  expect_matches_one_process(4, {"2", "1", "2", "interleaved2"});
}
TEST(StepTest, Tp2Pp2InterleavedWithSequenceParallelismStepEqualsTheOneProcessStep) {
  expect_matches_one_process(4, {"1", "2", "2", "interleaved2", "none", "sp"});
}

// Sequence parallelism: norms on 1/tp of the positions, all-gathers and reduce-scatters
// in place of the all-reduces; through pipeline stages and full recomputation too.
TEST(StepTest, Dp2Tp2WithSequenceParallelismStepEqualsTheOneProcessStep) {
  expect_matches_one_process(4, {"2", "2", "1", "1f1b", "none", "sp"});
}
TEST(StepTest, Tp2Pp2WithSequenceParallelismAndFullRecomputationStepEqualsTheOneProcessStep) {
  expect_matches_one_process(4, {"1", "2", "2", "1f1b", "full", "sp"});
}

// Fully sharded data parallelism: each rank holds 1/dp of every weight, gradient and moment,
// gathers a layer around its forward and backward and reduce-scatters its gradients; twenty
// steps equal the one-process run's, shard by shard, and the state held is 1/dp of the
// unsharded share (uneven rows at dp 3).
TEST(StepTest, FullyShardedDp2TwentyStepsEqualTheOneProcessRunAtAHalfOfTheState) {
  expect_matches_one_process(2, {"2", "1", "1", "1f1b", "none", "nosp", "fsdp"});
}
TEST(StepTest, FullyShardedDp3TwentyStepsEqualTheOneProcessRunAtAThirdOfTheState) {
  expect_matches_one_process(3, {"3", "1", "1", "1f1b", "none", "nosp", "fsdp"});
}
TEST(StepTest, FullyShardedDp4TwentyStepsEqualTheOneProcessRunAtAQuarterOfTheState) {
  expect_matches_one_process(4, {"4", "1", "1", "1f1b", "none", "nosp", "fsdp"});
}
TEST(StepTest, FullyShardedDp2Tp2TwentyStepsEqualTheOneProcessRun) {
  expect_matches_one_process(4, {"2", "2", "1", "1f1b", "none", "nosp", "fsdp"});
}
// The distributed optimizer (ZeRO-2): gradients reduce-scattered into two flat shards (decayed
// and not), clipped across dp x tp, AdamW on the shards, weights all-gathered.
TEST(StepTest, DistributedOptimizerDp2Tp2TwentyStepsEqualTheOneProcessRunAtAHalfOfTheMoments) {
  expect_matches_one_process(4, {"2", "2", "1", "1f1b", "none", "nosp", "zero2"});
}
TEST(StepTest, FullyShardedDp2Pp2WithFullRecomputationTwentyStepsEqualTheOneProcessRun) {
  expect_matches_one_process(4, {"2", "1", "2", "1f1b", "full", "nosp", "fsdp"});
}

}  // namespace
