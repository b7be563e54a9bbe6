// One store client in a process of its own, for tests that kill it: connects to ADDRESS
// (host:port with TENAX_STORE_TOKEN, or etcd://…), registers KEY=VALUE to be set when it goes
// away without a goodbye, prints "ready", and sleeps until killed (60 s at most).

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <thread>

#include "tenax/core/error.h"
#include "tenax/store/etcd_store.h"

int main(int argc, char** argv) {
  if (argc != 4) {
    std::fprintf(stderr, "usage: store_client ADDRESS KEY VALUE\n");
    return 2;
  }
  try {
    const char* token = std::getenv("TENAX_STORE_TOKEN");
    auto store = tenax::open_store(argv[1], token ? token : "", std::chrono::seconds(10));
    store->set_on_disconnect(argv[2], argv[3]);
    std::printf("ready\n");
    std::fflush(stdout);
    std::this_thread::sleep_for(std::chrono::seconds(60));
  } catch (const tenax::Error& e) {
    std::fprintf(stderr, "store_client: %s\n", e.what());
    return 1;
  }
  return 0;
}
