#pragma once

// The trainer's log, one format for static and elastic runs, printed by the first rank:
//   step    20/300 | loss 2.3456 | lr 3.00e-03 | grad norm 0.512 |   12345 tok/s | MFU  1.23% |
//     step   45.6 ms = compute 30.1 + comm 10.2 + ckpt 5.3
// and, with loss scaling, a line with the scale and the window's overflowed (skipped) steps.
// Each line covers the steps since the previous one (tokens/s, MFU and the split of the step
// time are averaged over them); validation losses get lines of their own.

#include <cstdint>

#include "trainer.h"

namespace llama {

class StepLog {
 public:
  // `every`: a line every N steps (and for the first and the last step logged); MFU against
  // `peak_tflops` per rank.
  StepLog(int64_t steps, int64_t every, double flops_per_token, double peak_tflops);

  // The world the next steps run on (after a re-formation: the new one).
  void set_world(int ranks, bool leader);
  // Adds a completed step (its index in s.step) and prints the window's line when due.
  void add(const StepStats& s);
  // Prints the validation loss after `step` completed steps.
  void validation(int64_t step, double loss) const;
  // Tokens per second over the steps after the first three logged (allocator and caches warm);
  // 0 before any.
  double steady_tokens_per_second() const;

 private:
  const int64_t steps_, every_;
  const double flops_per_token_, peak_tflops_;
  int ranks_ = 1;
  bool leader_ = false;
  int64_t first_ = -1;  // the first step logged
  double window_s_ = 0, window_comm_ = 0, window_ckpt_ = 0;
  int64_t window_tokens_ = 0, window_steps_ = 0, window_overflows_ = 0;
  double steady_s_ = 0;
  int64_t steady_tokens_ = 0;
};

}  // namespace llama
