// One member of a multi-process rendezvous test. Its id is "w<RANK>". It runs the actions of
// RDZV_ACTIONS_<RANK> (else RDZV_ACTIONS), space-separated:
//   next        join the next generation; prints "gen N rank R members a,b,c"
//   sleep MS    wait
//   dead        call dead_members until one is reported (up to 20 s); prints "dead a,b"
//   superseded  prints "superseded 0|1" for the last generation
//   until_superseded  waits (up to 60 s) until a newer generation is open; prints as superseded
//   signal K    sets the store key "rdzv-test/K"; `await K` waits for it (up to 60 s): members
//               order their steps through the store, never by sleeping
//   hang        SIGSTOP itself (heartbeats stop)
//   leave       leave the rendezvous (the member is gone); `back` joins it again
// Options: RDZV_MIN, RDZV_MAX, RDZV_LAST_CALL_MS, RDZV_JOIN_TIMEOUT_MS, RDZV_HB_TIMEOUT_MS.
// Prints "ERROR: ..." and exits 1 on an exception.

#include <signal.h>

#include <cstdlib>
#include <iostream>
#include <memory>
#include <sstream>
#include <thread>

#include "tenax/comm/init.h"
#include "tenax/elastic/rendezvous.h"

namespace {

std::string env(const std::string& name, const std::string& fallback = "") {
  const char* v = std::getenv(name.c_str());
  return v ? v : fallback;
}

std::string joined(const std::vector<std::string>& ids) {
  std::string s;
  for (const auto& id : ids) s += (s.empty() ? "" : ",") + id;
  return s;
}

}  // namespace

int main() {
  try {
    tenax::LaunchInfo info = tenax::detect_launch();
    auto store = tenax::TcpStore::connect(info.store_host, info.store_port, info.token,
                                          std::chrono::seconds(30));
    tenax::RendezvousOptions o;
    o.run = "test";
    o.min_workers = std::stoi(env("RDZV_MIN", "1"));
    o.max_workers = std::stoi(env("RDZV_MAX", "64"));
    o.last_call = std::chrono::milliseconds(std::stoi(env("RDZV_LAST_CALL_MS", "300")));
    o.join_timeout = std::chrono::milliseconds(std::stoi(env("RDZV_JOIN_TIMEOUT_MS", "20000")));
    o.heartbeat_interval = std::chrono::milliseconds(100);
    o.heartbeat_timeout = std::chrono::milliseconds(std::stoi(env("RDZV_HB_TIMEOUT_MS", "1500")));
    const std::string id = "w" + std::to_string(info.rank);
    auto member = std::make_unique<tenax::Rendezvous>(store, id, o);
    std::istringstream actions(env("RDZV_ACTIONS_" + std::to_string(info.rank), env("RDZV_ACTIONS")));
    tenax::Generation gen;
    for (std::string a; actions >> a;) {
      if (a == "next") {
        gen = member->next();
        std::cout << "gen " << gen.number << " rank " << gen.rank << " members "
                  << joined(gen.members) << std::endl;
      } else if (a == "sleep") {
        int ms = 0;
        actions >> ms;
        std::this_thread::sleep_for(std::chrono::milliseconds(ms));
      } else if (a == "dead") {
        std::vector<std::string> dead;
        for (int i = 0; i < 200 && dead.empty(); ++i) {
          dead = member->dead_members(gen);
          if (dead.empty()) std::this_thread::sleep_for(std::chrono::milliseconds(100));
        }
        std::cout << "dead " << joined(dead) << std::endl;
      } else if (a == "superseded") {
        std::cout << "superseded " << member->superseded(gen) << std::endl;
      } else if (a == "until_superseded") {
        bool newer = member->superseded(gen);
        for (int i = 0; i < 1200 && !newer; ++i) {
          std::this_thread::sleep_for(std::chrono::milliseconds(50));
          newer = member->superseded(gen);
        }
        std::cout << "superseded " << newer << std::endl;
      } else if (a == "signal" || a == "await") {
        std::string k;
        actions >> k;
        if (a == "signal") {
          store->set("rdzv-test/" + k, "1");
        } else {
          store->get("rdzv-test/" + k, std::chrono::seconds(60));
        }
      } else if (a == "leave") {
        member.reset();
      } else if (a == "back") {
        member = std::make_unique<tenax::Rendezvous>(store, id, o);
      } else if (a == "hang") {
        ::raise(SIGSTOP);
      } else {
        std::cout << "ERROR: unknown action " << a << std::endl;
        return 2;
      }
    }
  } catch (const std::exception& e) {
    std::cout << "ERROR: " << e.what() << std::endl;
    return 1;
  }
  return 0;
}
