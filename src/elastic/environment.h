#pragma once

#include "tenax/elastic/elastic.h"

namespace tenax::detail {

// The elastic layer's launch edge, for the ElasticRunner's constructor: fills what `o` leaves
// unset from the environment, as ElasticOptions documents (TENAX_ACTIVE_WORKERS,
// TENAX_TIMEOUT, TENAX_PREFLIGHT, TENAX_EVENTS_FILE, the communicators' and the checkpoint's
// options from theirs). Throws ConfigError naming a malformed variable.
void apply_environment(ElasticOptions& o);

}  // namespace tenax::detail
