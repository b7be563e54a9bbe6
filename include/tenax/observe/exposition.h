#pragma once

// Text exposition (Prometheus 0.0.4) helpers for agents that serve several processes' series on
// one endpoint (tenaxrun serves its host's workers). Every function here may be called from any
// thread: they share nothing.

#include <optional>
#include <string>
#include <vector>

#include "tenax/core/export.h"

namespace tenax::observe {

// Merges expositions into one: each family once (its HELP and TYPE from the first text that has
// it), with the samples of every text, in the order families first appear. Series must differ
// in their labels across texts (each process's constant labels do that).
TENAX_API std::string merge_expositions(const std::vector<std::string>& texts);

// GET http://host:port/metrics within `timeout_ms`; nullopt when it does not answer 200 in time.
TENAX_API std::optional<std::string> fetch_metrics(const std::string& host, int port,
                                                   int timeout_ms);

}  // namespace tenax::observe
