#pragma once

// The main of a multi-process test worker: bootstrap from the launcher's environment, run the
// scenario named by argv[1], and report "PASS <scenario>" (exit 0) when every CHECK held.

#include <chrono>
#include <exception>
#include <functional>
#include <iostream>
#include <map>
#include <optional>
#include <string>

#include "support/worker_check.h"
#include "tenax/comm/init.h"

namespace tenax::testing {

using Scenarios = std::map<std::string, std::function<void(World&)>>;

struct WorkerOptions {
  bool barrier_at_end = true;  // ranks leave together (none tears down a peer still checking)
  // A scenario that must fail passes when its error contains this text ("": none must fail).
  std::string expected_error;
};

inline int worker_main(int argc, char** argv, const Scenarios& scenarios,
                       const WorkerOptions& options = {}) {
  if (argc < 2) {
    std::cerr << "usage: " << argv[0] << " SCENARIO" << std::endl;
    return 2;
  }
  const std::string scenario = argv[1];
  auto it = scenarios.find(scenario);
  if (it == scenarios.end()) {
    std::cerr << "unknown scenario " << scenario << std::endl;
    return 2;
  }
  std::optional<World> world;
  try {
    world = init();
    it->second(*world);
    if (options.barrier_at_end) world->comm->barrier();
  } catch (const std::exception& e) {
    std::cout << "ERROR: " << e.what() << std::endl;
    if (options.expected_error.empty() ||
        std::string(e.what()).find(options.expected_error) == std::string::npos) {
      return 1;
    }
    // The expected error ends the scenario where it happens, perhaps on this rank while a
    // peer is still inside a collective with it (connecting a communicator): leave when every
    // rank got its error too, met through the store, not the communicator the error may have
    // left in any state. A peer that never comes is its own failure; after 30 s go anyway.
    if (world && world->store) {
      try {
        const std::string key = "worker_main/expected_error/";
        world->store->set(key + std::to_string(world->rank), "1");
        for (int r = 0; r < world->size; ++r) {
          world->store->get(key + std::to_string(r), std::chrono::seconds(30));
        }
      } catch (const std::exception&) {
      }
    }
    std::cout << "PASS " << scenario << std::endl;
    return 0;
  }
  if (!options.expected_error.empty()) {
    std::cout << "FAIL " << scenario << ": no error" << std::endl;
    return 1;
  }
  return worker_exit(scenario);
}

}  // namespace tenax::testing
