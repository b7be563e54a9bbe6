// The elastic layer's launch edge: the runner's options as the environment asks for them.

#include "elastic/environment.h"

#include "tenax/core/config.h"

namespace tenax::detail {

void apply_environment(ElasticOptions& o) {
  const Settings& s = settings();
  if (o.max_active <= 0) o.max_active = static_cast<int>(s.active_workers);
  if (o.comm_timeout.count() <= 0) o.comm_timeout = s.timeout;
  if (s.preflight) o.health.preflight.enabled = true;
  if (o.events_file.empty()) o.events_file = s.observe.events_file;
  const CommOptions env = CommOptions::from_environment();
  if (o.comm.hostname.empty()) o.comm.hostname = env.hostname;
  if (!o.comm.debug_collectives) o.comm.debug_collectives = env.debug_collectives;
  if (!o.comm.shared_memory) o.comm.shared_memory = env.shared_memory;
  if (o.checkpoint.timeout.count() <= 0) o.checkpoint.timeout = s.timeout;
  o.checkpoint.s3 = S3Options::from_environment(o.checkpoint.s3);
}

}  // namespace tenax::detail
