// tenax-health: the health checks of one host, and the quarantine list, from the command line.
//
//   tenax-health check [--memory-mb N] [--directory DIR] [--disk-mb N] [--gemm-size N]
//                      [--device cpu|cuda:N]
//       the host checks (/dev/shm and memory for N MiB, DIR writable with room) and the
//       deterministic GEMM's checksum (compare it across hosts); exit 1 when a check fails
//   tenax-health quarantine
//       the hosts the preflight quarantined (failed twice within the window), with why
//   tenax-health clear --host HOST
//       lets HOST back in (an operator's decision after repairing it)
//
// The store is TENAX_STORE_ADDR (host:port or etcd://…) with TENAX_STORE_TOKEN. Exit status:
// 0 ok, 1 a check failed (or nothing to clear), 2 bad usage or the store unreachable.

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "tenax/core/config.h"
#include "tenax/core/error.h"
#include "tenax/health/preflight.h"
#include "tenax/store/etcd_store.h"
#include "tenax/store/store.h"

namespace {

[[noreturn]] void usage(const std::string& why) {
  std::fprintf(stderr,
               "tenax-health: %s\nusage: tenax-health check [--device cpu|cuda:N] [--memory-mb N] "
               "[--directory DIR] "
               "[--disk-mb N] [--gemm-size N]\n       tenax-health quarantine\n       "
               "tenax-health clear --host HOST\n",
               why.c_str());
  std::exit(2);
}

int64_t number(const std::string& flag, const char* text) {
  char* end = nullptr;
  const long long v = std::strtoll(text, &end, 10);
  if (end == text || *end != '\0' || v < 0)
    usage(flag + " needs a non-negative integer, not '" + text + "'");
  return v;
}

std::shared_ptr<tenax::Store> store() {
  auto addr = tenax::env_string("TENAX_STORE_ADDR");
  if (!addr) usage("TENAX_STORE_ADDR is not set (host:port or etcd://…)");
  return tenax::open_store(*addr, tenax::env_string("TENAX_STORE_TOKEN").value_or(""),
                           std::chrono::seconds(10));
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) usage("which command?");
  const std::string cmd = argv[1];
  try {
    if (cmd == "check") {
      tenax::PreflightOptions o;
      std::string device = "cpu";
      for (int i = 2; i < argc; ++i) {
        const std::string a = argv[i];
        if (i + 1 >= argc) usage(a + " needs a value");
        if (a == "--memory-mb") {
          o.memory_bytes = number(a, argv[++i]) << 20;
        } else if (a == "--directory") {
          o.directory = argv[++i];
        } else if (a == "--disk-mb") {
          o.disk_bytes = number(a, argv[++i]) << 20;
        } else if (a == "--gemm-size") {
          o.gemm_size = number(a, argv[++i]);
          if (o.gemm_size < 1) usage("--gemm-size must be positive");
        } else if (a == "--device") {
          device = argv[++i];
        } else {
          usage("unknown flag " + a);
        }
      }
      const auto reasons = tenax::host_checks(o, nullptr, {});
      // The CPU's is the fixed-order loop the preflight runs there; a device's is its BLAS's.
      const uint64_t sum = device == "cpu" ? tenax::gemm_checksum(o.gemm_size)
                                           : tenax::device_gemm_checksum(o.gemm_size, device);
      std::printf("GEMM %lldx%lld on %s checksum %016llx\n", (long long)o.gemm_size,
                  (long long)o.gemm_size, device.c_str(), (unsigned long long)sum);
      for (const auto& why : reasons) std::printf("FAILED: %s\n", why.c_str());
      if (reasons.empty()) std::printf("host checks passed\n");
      return reasons.empty() ? 0 : 1;
    }
    if (cmd == "quarantine") {
      if (argc != 2) usage("quarantine takes no arguments");
      const auto hosts = tenax::quarantined_hosts(*store());
      for (const auto& [host, why] : hosts) std::printf("%s %s\n", host.c_str(), why.c_str());
      if (hosts.empty()) std::printf("no host is quarantined\n");
      return 0;
    }
    if (cmd == "clear") {
      if (argc != 4 || std::string(argv[2]) != "--host") usage("clear needs --host HOST");
      if (tenax::clear_quarantine(*store(), argv[3])) {
        std::printf("host %s is no longer quarantined\n", argv[3]);
        return 0;
      }
      std::printf("host %s was not quarantined\n", argv[3]);
      return 1;
    }
    usage("unknown command '" + cmd + "'");
  } catch (const tenax::Error& e) {
    std::fprintf(stderr, "tenax-health: %s\n", e.what());
    return 2;
  }
}
