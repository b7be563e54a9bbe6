#pragma once

// Leveled logging to stderr. TENAX_LOG_LEVEL=debug|info|warning|error (default info).
// TENAX_LOG_FORMAT=text (default): "tenax <LEVEL> <message>". TENAX_LOG_FORMAT=json: one JSON
// object per line, {"ts":…,"level":…,"msg":…} with the context below (rank, host, generation,
// step) as fields, for log collectors.
// Thread rules: every function may be called from any thread; lines are written whole (one
// write under a lock), and the context is the process's, shared by every thread.

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "tenax/core/export.h"

namespace tenax {

enum class LogLevel { kDebug = 0, kInfo = 1, kWarning = 2, kError = 3 };

// Writes one line for `message` to stderr when `level` is enabled. Thread-safe.
TENAX_API void log(LogLevel level, const std::string& message);

// True iff TENAX_LOG_FORMAT=json.
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
