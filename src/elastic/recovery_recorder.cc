#include "elastic/recovery_recorder.h"

#include <algorithm>

namespace tenax::detail {
namespace {

double unix_now() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

double ms_since(RecoveryRecorder::Clock::time_point t) {
  return std::chrono::duration<double, std::milli>(RecoveryRecorder::Clock::now() - t).count();
}

std::vector<std::string> minus(const std::vector<std::string>& a,
                               const std::vector<std::string>& b) {
  std::vector<std::string> out;
  for (const auto& x : a) {
    if (std::find(b.begin(), b.end(), x) == b.end()) out.push_back(x);
  }
  return out;
}

}  // namespace

void RecoveryRecorder::failure(std::string detected_by, int64_t failed_step, double detect_ms) {
  RecoveryEvent ev;
  ev.cause = "failure";
  ev.detected_by = std::move(detected_by);
  ev.failed_step = failed_step;
  ev.detect_ms = detect_ms;
  event_ = std::move(ev);
  detected_ = Clock::now();
  detected_at_ = unix_now();
}

void RecoveryRecorder::join(std::string detected_by) {
  RecoveryEvent ev;
  ev.cause = "join";
  ev.detected_by = std::move(detected_by);
  event_ = std::move(ev);
  detected_ = Clock::now();
  detected_at_ = unix_now();
}

void RecoveryRecorder::arrived(const std::string& member, const Generation& gen,
                               Clock::time_point began, double rendezvous_ms) {
  RecoveryEvent ev;
  ev.cause = "join";
  ev.detected_by = member + " joined";
  ev.generation = gen.number;
  ev.members = gen.members;
  ev.joined = {member};
  ev.rendezvous_ms = rendezvous_ms;
  event_ = std::move(ev);
  detected_ = began;
  detected_at_ = unix_now() - ms_since(began) / 1000;
}

void RecoveryRecorder::formed(const Generation& gen, const std::vector<std::string>& previous,
                              double rendezvous_ms) {
  if (!event_) return;
  event_->generation = gen.number;
  event_->members = gen.members;
  event_->lost = minus(previous, gen.members);
  event_->joined = minus(gen.members, previous);
  event_->rendezvous_ms = rendezvous_ms;
}

void RecoveryRecorder::restored(int64_t step, const std::optional<RestoreResult>& result,
                                double restore_ms) {
  if (!event_) return;
  event_->resumed_step = step;
  event_->tier = result ? result->tier : "none";
  event_->bytes = result ? result->bytes : 0;
  event_->restore_ms = restore_ms;
}

RecoveryEvent RecoveryRecorder::complete(double first_step_ms) {
  RecoveryEvent ev = std::move(*event_);
  event_.reset();
  ev.first_step_ms = first_step_ms;
  ev.total_ms = ms_since(detected_);
  ev.detected_at = detected_at_;
  return ev;
}

}  // namespace tenax::detail
