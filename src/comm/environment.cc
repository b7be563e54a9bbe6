// The comm layer's launch edge: its options as the environment asks for them.

#include "tenax/comm/communicator.h"
#include "tenax/comm/flight_recorder.h"
#include "tenax/core/config.h"

namespace tenax {

CommOptions CommOptions::from_environment() {
  const Settings& s = settings();
  CommOptions o;
  o.timeout = s.timeout;
  o.hostname = s.hostname;
  o.debug_collectives = s.debug_collectives;
  o.shared_memory = s.shared_memory;
  return o;
}

FlightRecorderOptions FlightRecorderOptions::from_environment() {
  const ObserveEnvironment& env = settings().observe;
  FlightRecorderOptions o;
  o.dir = env.flight_dir;
  if (env.flight_entries > 0) o.entries = static_cast<size_t>(env.flight_entries);
  return o;
}

}  // namespace tenax
