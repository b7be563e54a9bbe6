#pragma once

// Leveled logging to stderr, at the level and in the format of LogOptions (info and text until
// they are set). Text: "tenax <LEVEL> <message>". JSON: one JSON object per line,
// {"ts":…,"level":…,"msg":…} with the context below (rank, host, generation, step) as fields,
// for log collectors. The environment's choice (TENAX_LOG_LEVEL, TENAX_LOG_FORMAT) is
// LogOptions::from_environment(); connect() and init() apply it unless the program set its own.
// Thread rules: every function may be called from any thread; lines are written whole (one
// write under a lock), and the context is the process's, shared by every thread.

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "tenax/core/export.h"

namespace tenax {

enum class LogLevel { kDebug = 0, kInfo = 1, kWarning = 2, kError = 3 };

struct TENAX_API LogOptions {
  LogLevel level = LogLevel::kInfo;  // lines below it are dropped
  bool json = false;                 // one JSON object per line instead of text
  // TENAX_LOG_LEVEL=debug|info|warning|error (else info), TENAX_LOG_FORMAT=json|text (else
  // text). Throws ConfigError naming the variable when TENAX_LOG_FORMAT is neither.
  static LogOptions from_environment();
};

// Sets the process's log level and format. Any thread; lines being written keep the old ones.
TENAX_API void set_log_options(const LogOptions& options);

// Whether set_log_options has been called in this process (connect() applies the
// environment's options only where it has not).
TENAX_API bool log_options_set();

// Writes one line for `message` to stderr when `level` is enabled. Thread-safe.
TENAX_API void log(LogLevel level, const std::string& message);

// True iff the log format is JSON (LogOptions::json).
TENAX_API bool json_logs();

// Context every line carries (JSON format): `key` set to `value` ("" removes it). The elastic
// runner sets rank, host and generation; trainers set the step.
TENAX_API void set_log_context(const std::string& key, const std::string& value);
TENAX_API void set_log_step(int64_t step);

// One JSON object (no newline): ts, level, msg, the context, then `fields` (already JSON values,
// e.g. {"loss", "2.5"}). What log() writes in JSON format; trainers use it for their own lines.
TENAX_API std::string json_log_line(
    LogLevel level, const std::string& message,
    const std::vector<std::pair<std::string, std::string>>& fields = {});

// `s` as a JSON string literal, quotes included.
TENAX_API std::string json_quote(const std::string& s);

}  // namespace tenax
