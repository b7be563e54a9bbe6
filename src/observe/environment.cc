// The observe layer's launch edge: its options as the environment asks for them.

#include "tenax/core/config.h"
#include "tenax/observe/observe.h"
#include "tenax/store/launch.h"

namespace tenax::observe {

ObserveOptions ObserveOptions::from_environment(int local_rank) {
  const ObserveEnvironment& env = settings().observe;
  ObserveOptions o;
  o.address = env.metrics_address;
  o.job = env.job;
  if (env.metrics_port >= 0) {
    const int local = local_rank >= 0 ? local_rank : launch_info().local_rank;
    o.port = env.metrics_port == 0 ? 0 : static_cast<int>(env.metrics_port) + local;
    o.port_source = "TENAX_METRICS_PORT " + std::to_string(env.metrics_port) + " + local rank " +
                    std::to_string(local);
  }
  return o;
}

}  // namespace tenax::observe
