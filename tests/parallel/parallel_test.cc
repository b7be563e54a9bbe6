// Data parallelism and the process mesh across real processes, against the single-process run.

#include <gtest/gtest.h>

#include "support/process.h"
#include "support/rank_checks.h"

using tenax::testing::dump;
using tenax::testing::run_ranks;

namespace {

void expect_all_pass(int n, const std::string& scenario) {
  tenax::testing::expect_all_pass(run_ranks(n, {PARALLEL_WORKER, scenario}), scenario);
}

class DataParallelTest : public ::testing::TestWithParam<int> {};

TEST_P(DataParallelTest, TwentySgdMomentumStepsMatchTheSingleProcessRun) {
  expect_all_pass(GetParam(), "match");
}

INSTANTIATE_TEST_SUITE_P(DpSizes, DataParallelTest, ::testing::Values(2, 3, 4),
                         [](const auto& info) { return "dp" + std::to_string(info.param); });

TEST(DataParallelTest, GradientAccumulationWithNoSyncEqualsTheLargerBatch) {
  expect_all_pass(2, "accumulate");
}

TEST(DataParallelTest, UnusedParametersAreNamedOrCountAsZeroWhenAllowed) {
  expect_all_pass(2, "unused");
}

TEST(DataParallelTest, GradientsAveragedInBf16AreTheFp32AverageToBf16Precision) {
  expect_all_pass(3, "bf16_reduce");
}

TEST(LossScalerTest, AnOverflowOnOneRankSkipsTheStepOnEveryRank) {
  expect_all_pass(3, "loss_scale_overflow");
}

class ShardedDataParallelTest : public ::testing::TestWithParam<int> {};

TEST_P(ShardedDataParallelTest, ShardedAdamWMatchesTheSingleProcessRunAndHoldsOneShardOfState) {
  expect_all_pass(GetParam(), "zero");
}

INSTANTIATE_TEST_SUITE_P(DpSizes, ShardedDataParallelTest, ::testing::Values(2, 3),
                         [](const auto& info) { return "dp" + std::to_string(info.param); });

class TensorParallelTest : public ::testing::TestWithParam<int> {};

TEST_P(TensorParallelTest, ColumnRowEmbeddingAndVocabCrossEntropyMatchTheSingleProcessModel) {
  expect_all_pass(GetParam(), "tp");
}

TEST_P(TensorParallelTest, AttentionWithHeadsSplitAcrossRanksMatchesTheSingleProcessModel) {
  expect_all_pass(GetParam(), "attention");
}

TEST_P(TensorParallelTest, SequenceParallelLayersMatchTheSingleProcessModelInFp32AndBf16) {
  expect_all_pass(GetParam(), "sequence_parallel");
}

INSTANTIATE_TEST_SUITE_P(TpSizes, TensorParallelTest, ::testing::Values(2, 4),
                         [](const auto& info) { return "tp" + std::to_string(info.param); });

void expect_pipeline_passes(int p, const std::string& schedule, int micro) {
  auto results = run_ranks(p, {PARALLEL_WORKER, "pp"},
                           {{"PP_SCHEDULE", schedule}, {"PP_MICRO", std::to_string(micro)}});
  for (const auto& r : results) {
    EXPECT_EQ(r.exit_code, 0) << dump(results);
    EXPECT_NE(r.output.find("PASS pp"), std::string::npos) << dump(results);
  }
}

TEST(PipelineTest, Pp2GPipeMatchesTheSingleProcessRun) { expect_pipeline_passes(2, "gpipe", 4); }
TEST(PipelineTest, Pp2OneFOneBMatchesTheSingleProcessRun) { expect_pipeline_passes(2, "1f1b", 4); }
TEST(PipelineTest, Pp4OneFOneBWithEightMicroBatchesMatchesTheSingleProcessRun) {
  expect_pipeline_passes(4, "1f1b", 8);
}
TEST(PipelineTest, Pp2InterleavedWithTwoChunksARankMatchesTheSingleProcessRun) {
  expect_pipeline_passes(2, "interleaved", 4);
}
TEST(PipelineTest, Pp4InterleavedWithTwoChunksARankMatchesTheSingleProcessRun) {
  expect_pipeline_passes(4, "interleaved", 8);
}

TEST(CompositionTest, DataParallelAroundTensorParallelOnADp2Tp2MeshMatchesOneProcess) {
  expect_all_pass(4, "dp_tp");
}

void expect_composition_passes(const std::string& how) {
  auto results = run_ranks(4, {PARALLEL_WORKER, "compose"}, {{"COMPOSE", how}});
  for (const auto& r : results) {
    EXPECT_EQ(r.exit_code, 0) << dump(results);
    EXPECT_NE(r.output.find("PASS compose"), std::string::npos) << dump(results);
  }
}

TEST(CompositionTest, TensorParallelStagesInATp2Pp2PipelineMatchOneProcess) {
  expect_composition_passes("tp_pp");
}

TEST(CompositionTest, DataParallelStagesInADp2Pp2PipelineMatchOneProcess) {
  expect_composition_passes("dp_pp");
}

TEST(ProcessMeshTest, GroupsFollowTheOrderAndBadMeshesSayWhatFits) {
  expect_all_pass(4, "mesh");
}

}  // namespace
