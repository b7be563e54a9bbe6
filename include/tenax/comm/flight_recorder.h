#pragma once

// The flight recorder: every communicator keeps a ring of its last operations (sequence number,
// op, dtype, count, peer, enqueue/start/end times, state; FlightRecorderOptions::entries). With
// a directory set, a rank writes them all to <dir>/flight-<who>.json when a collective times out
// or loses a peer, and on SIGUSR1 where the program asks for it. `tenax-flight <dir>` merges
// the ranks' files and says which rank is behind on which operation.

#include <cstddef>
#include <string>

#include "tenax/core/export.h"

namespace tenax {

struct TENAX_API FlightRecorderOptions {
  std::string dir;       // where dumps go ("": none)
  size_t entries = 2048;  // operations kept per communicator (those created after it is set)
  // The launch edge: TENAX_FLIGHT_DIR and TENAX_FLIGHT_ENTRIES (unset or 0: 2048).
  static FlightRecorderOptions from_environment();
};

// Sets the process's flight recorder options (none until set: no dumps, 2048 entries).
// connect() and init() apply FlightRecorderOptions::from_environment() unless the program set
// its own first. Any thread.
TENAX_API void set_flight_recorder_options(const FlightRecorderOptions& options);

// Whether set_flight_recorder_options has been called in this process.
TENAX_API bool flight_recorder_options_set();

// This process's name in dump files (e.g. "rank3" or an elastic member id); default
// "pid<pid>". The bootstrap and the elastic runner set it.
TENAX_API void set_flight_identity(const std::string& who);

// Writes every live communicator's records, with `reason`, to <dir>/flight-<who>.json (dir ""
// : FlightRecorderOptions::dir) and returns the path; "" when there is no directory. Replaces an earlier
// dump of this process. Throws nothing: a failed write is logged.
TENAX_API std::string dump_flight_records(const std::string& reason, const std::string& dir = "");

// With FlightRecorderOptions::dir set (call it after connect() or set_flight_recorder_options):
// SIGUSR1 makes this process dump its records (from a thread of its
// own, not the handler), then calls the handler the program had installed for SIGUSR1 before
// (a function; SIG_DFL and SIG_IGN are not called), which is back in place at exit. The signals
// are the program's: tenax never calls this itself (llama_train does). Idempotent; any thread.
TENAX_API void install_flight_signal_handler();

}  // namespace tenax
