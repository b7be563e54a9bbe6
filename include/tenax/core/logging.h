#pragma once

// Minimal leveled logging to stderr. TENAX_LOG_LEVEL=debug|info|warning|error (default info).

#include <string>

#include "tenax/core/export.h"

namespace tenax {

enum class LogLevel { kDebug = 0, kInfo = 1, kWarning = 2, kError = 3 };

// Writes one line "tenax <LEVEL> <message>" to stderr when `level` is enabled. Thread-safe.
TENAX_API void log(LogLevel level, const std::string& message);

}  // namespace tenax
