#pragma once

// Process-wide settings read from the environment. Each getter documents its variable.

#include <chrono>
#include <optional>
#include <string>

namespace tenax {

// Returns the value of environment variable `name`, or nullopt when it is unset or empty.
std::optional<std::string> env_string(const char* name);

// Returns the integer value of `name`, or `fallback` when unset.
// Throws ConfigError naming the variable when it is set but not an integer.
long long env_int(const char* name, long long fallback);

// Returns true iff `name` is set to 1/true/yes/on (case-insensitive).
bool env_flag(const char* name);

// The default timeout of every blocking call: TENAX_TIMEOUT (seconds, may be fractional),
// else 30 s. Throws ConfigError when TENAX_TIMEOUT is not a positive number.
std::chrono::milliseconds default_timeout();

// True iff TENAX_DEBUG_COLLECTIVES is set: collectives then check shapes and dtypes across
// ranks before running (one extra small exchange per call).
bool debug_collectives();

}  // namespace tenax
