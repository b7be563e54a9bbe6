#include "step_log.h"

#include <tenax/core/logging.h>
#include <tenax/observe/observe.h>

#include <cmath>
#include <cstdio>
#include <string>

namespace llama {

StepLog::StepLog(int64_t steps, int64_t every, double flops_per_token, double peak_tflops)
    : steps_(steps), every_(every < 1 ? 1 : every), flops_per_token_(flops_per_token),
      peak_tflops_(peak_tflops) {}

void StepLog::set_world(int ranks, bool leader) {
  ranks_ = ranks;
  leader_ = leader;
}

void StepLog::add(const StepStats& s) {
  if (first_ < 0) first_ = s.step;
  tenax::observe::StepSample m;
  m.step = s.step + 1;
  m.loss = s.loss, m.learning_rate = s.lr, m.grad_norm = s.grad_norm;
  m.tokens = s.tokens, m.seconds = s.seconds;
  m.comm_seconds = s.comm_seconds, m.ckpt_seconds = s.ckpt_seconds;
  m.flops_per_token = flops_per_token_, m.peak_flops = peak_tflops_ * 1e12 * ranks_;
  tenax::observe::record_step(m);
  tenax::set_log_step(s.step + 1);
  window_s_ += s.seconds, window_comm_ += s.comm_seconds, window_ckpt_ += s.ckpt_seconds;
  window_tokens_ += s.tokens, ++window_steps_;
  if (s.overflow) ++window_overflows_;
  if (s.step >= first_ + 3) steady_s_ += s.seconds, steady_tokens_ += s.tokens;
  const int64_t done = s.step + 1;
  if (!(done % every_ == 0 || s.step == first_ || done == steps_)) return;
  if (leader_) {
    const double tps = double(window_tokens_) / window_s_;
    const double mfu = tps * flops_per_token_ / (peak_tflops_ * 1e12 * ranks_);
    const double ms = 1000.0 / double(window_steps_);
    if (tenax::json_logs()) {
      auto num = [](double v) { return std::isfinite(v) ? std::to_string(v) : "null"; };
      std::printf("%s\n", tenax::json_log_line(
                              tenax::LogLevel::kInfo, "step",
                              {{"steps", std::to_string(steps_)},
                               {"loss", num(s.loss)},
                               {"lr", num(s.lr)},
                               {"grad_norm", num(s.grad_norm)},
                               {"tokens_per_second", num(tps)},
                               {"mfu", num(mfu)},
                               {"step_ms", num(window_s_ * ms)},
                               {"compute_ms", num((window_s_ - window_comm_ - window_ckpt_) * ms)},
                               {"comm_ms", num(window_comm_ * ms)},
                               {"ckpt_ms", num(window_ckpt_ * ms)},
                               {"loss_scale", num(s.loss_scale)},
                               {"overflows", std::to_string(window_overflows_)}})
                              .c_str());
    } else {
      std::printf(
          "step %5lld/%lld | loss %.4f | lr %.2e | grad norm %.3f | %8.0f tok/s | "
          "MFU %5.2f%% | step %7.1f ms = compute %.1f + comm %.1f + ckpt %.1f\n",
          (long long)done, (long long)steps_, s.loss, s.lr, s.grad_norm, tps, 100 * mfu,
          window_s_ * ms, (window_s_ - window_comm_ - window_ckpt_) * ms, window_comm_ * ms,
          window_ckpt_ * ms);
      if (s.loss_scale > 0) {
        std::printf("            loss scale %g | overflowed %lld of %lld steps\n", s.loss_scale,
                    (long long)window_overflows_, (long long)window_steps_);
      }
    }
    std::fflush(stdout);
  }
  window_s_ = window_comm_ = window_ckpt_ = 0;
  window_tokens_ = window_steps_ = window_overflows_ = 0;
}

void StepLog::validation(int64_t step, double loss) const {
  if (!leader_) return;
  if (tenax::json_logs()) {
    std::printf("%s\n", tenax::json_log_line(tenax::LogLevel::kInfo, "validation",
                                             {{"validation_loss", std::to_string(loss)}})
                            .c_str());
  } else {
    std::printf("step %5lld/%lld | validation loss %.4f\n", (long long)step, (long long)steps_,
                loss);
  }
  std::fflush(stdout);
}

double StepLog::steady_tokens_per_second() const {
  return steady_s_ > 0 ? double(steady_tokens_) / steady_s_ : 0;
}

}  // namespace llama
