// The pipeline schedules' pass orders, without processes: every stage runs every forward and
// backward once, and the stages' orders together never wait on each other in a cycle.

#include <gtest/gtest.h>

#include <set>
#include <tuple>
#include <vector>

#include "tenax/parallel/pipeline.h"

namespace {

using tenax::PipelinePass;
using tenax::PipelineScheduleKind;

// Runs the stages' orders as far as their dependencies allow (a chunk's forward after the
// previous virtual stage's, its backward after its own forward and the next virtual stage's
// backward; sends never block): true if every stage gets through its whole order.
bool completes(const std::vector<std::vector<PipelinePass>>& orders, int v) {
  const int p = static_cast<int>(orders.size()), last = v * p - 1;
  std::set<std::tuple<bool, int, int>> done;  // (forward, virtual stage, micro-batch)
  std::vector<size_t> next(p, 0);
  for (bool progress = true; progress;) {
    progress = false;
    for (int s = 0; s < p; ++s) {
      for (; next[s] < orders[s].size(); ++next[s], progress = true) {
        const PipelinePass& x = orders[s][next[s]];
        const int vs = x.chunk * p + s, i = x.micro_batch;
        const bool ready =
            x.forward ? vs == 0 || done.count({true, vs - 1, i})
                      : done.count({true, vs, i}) && (vs == last || done.count({false, vs + 1, i}));
        if (!ready) break;
        done.insert({x.forward, vs, i});
      }
    }
  }
  for (int s = 0; s < p; ++s) {
    if (next[s] != orders[s].size()) return false;
  }
  return true;
}

TEST(PipelineOrderTest, EveryStageRunsEachPassOnceAndNoScheduleDeadlocks) {
  for (auto kind : {PipelineScheduleKind::kGPipe, PipelineScheduleKind::k1F1B,
                    PipelineScheduleKind::kInterleaved1F1B}) {
    for (int p = 2; p <= 5; ++p) {
      for (int v = 1; v <= (kind == PipelineScheduleKind::kInterleaved1F1B ? 4 : 1); ++v) {
        for (int m = p; m <= 4 * p; m += p) {
          for (int s = 0; s < p; ++s) {
            std::multiset<std::tuple<bool, int, int>> seen;
            for (const auto& x : tenax::pipeline_order(kind, p, s, m, v)) {
              seen.insert({x.forward, x.chunk, x.micro_batch});
            }
            std::multiset<std::tuple<bool, int, int>> want;
            for (int c = 0; c < v; ++c) {
              for (int i = 0; i < m; ++i) want.insert({true, c, i}), want.insert({false, c, i});
            }
            EXPECT_EQ(seen, want) << "p=" << p << " v=" << v << " m=" << m << " stage " << s;
          }
          std::vector<std::vector<PipelinePass>> orders;
          for (int s = 0; s < p; ++s) orders.push_back(tenax::pipeline_order(kind, p, s, m, v));
          EXPECT_TRUE(completes(orders, v)) << "p=" << p << " v=" << v << " m=" << m;
        }
      }
    }
  }
}

// The check can fail: orders that wait on each other in a cycle are found stuck.
TEST(PipelineOrderTest, AnOrderWithACycleIsFoundStuck) {
  std::vector<std::vector<PipelinePass>> orders;
  for (int s = 0; s < 2; ++s) {
    orders.push_back(tenax::pipeline_order(PipelineScheduleKind::kGPipe, 2, s, 2, 1));
  }
  ASSERT_TRUE(completes(orders, 1));
  // Stage 0 runs backward 0 before its forward 1; stage 1 waits for forward 1 before any
  // backward: stage 0 waits on stage 1's backward 0, which waits on stage 0's forward 1.
  orders[0] = {{true, 0, 0}, {false, 0, 0}, {true, 0, 1}, {false, 0, 1}};
  orders[1] = {{true, 0, 0}, {true, 0, 1}, {false, 0, 0}, {false, 0, 1}};
  EXPECT_FALSE(completes(orders, 1));
}

}  // namespace
