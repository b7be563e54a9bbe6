#include "tenax/health/preflight.h"

#include <ATen/Context.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/from_blob.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/zeros.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <thread>

#include "tenax/comm/communicator.h"
#include "tenax/core/error.h"
#include "tenax/core/logging.h"
#include "tenax/core/metrics.h"

namespace tenax {
namespace {

using Clock = std::chrono::steady_clock;
using nlohmann::json;

double unix_now() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

std::string mib(double bytes) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.0f MiB", bytes / (1 << 20));
  return buf;
}

double free_bytes(const std::string& path) {
  struct statvfs s;
  if (statvfs(path.c_str(), &s) != 0) return -1;
  return static_cast<double>(s.f_bavail) * static_cast<double>(s.f_frsize);
}

double available_memory() {
  std::ifstream in("/proc/meminfo");
  std::string key;
  double kb = 0;
  std::string unit;
  while (in >> key >> kb >> unit) {
    if (key == "MemAvailable:") return kb * 1024;
  }
  return -1;
}

metrics::Counter& failures(const std::string& check) {
  return metrics::registry()
      .family("tenax_health_preflight_failures_total", "Preflight checks that failed, by check",
              metrics::Type::kCounter, {"check"})
      .counter({check});
}

std::string key(const std::string& run, const std::string& suffix) {
  return "health/" + run + "/" + suffix;
}

// Records a failure of `host` and quarantines it at the second one within the window.
void record_host_failure(Store& store, const std::string& host, const std::string& why,
                         std::chrono::seconds window) {
  const std::string k = "health/failures/" + host;
  const double now = unix_now();
  for (int attempt = 0; attempt < 20; ++attempt) {
    const std::string old = store.try_get(k).value_or("");
    json times = old.empty() ? json::array() : json::parse(old);
    json kept = json::array();
    for (const auto& t : times) {
      if (now - t.get<double>() <= static_cast<double>(window.count())) kept.push_back(t);
    }
    kept.push_back(now);
    if (store.compare_set(k, old, kept.dump()) != kept.dump()) continue;
    if (kept.size() >= 2) {
      store.set("health/quarantine/" + host,
                json{{"since", now}, {"failures", kept.size()}, {"last", why}}.dump());
      log(LogLevel::kError, "health: host " + host + " failed its checks " +
                                std::to_string(kept.size()) + " times within " +
                                std::to_string(window.count()) +
                                " s: quarantined (clear it with "
                                "`tenax-health clear --host " +
                                host + "`)");
    }
    return;
  }
}

// The members that arrived together: the first to see `expected` records (or the timeout)
// closes the round with the list; the others read it.
std::vector<std::string> close_round(Store& store, const std::string& run, int expected,
                                     Clock::time_point deadline) {
  const std::string closed = key(run, "pf/closed");
  for (;;) {
    if (auto v = store.try_get(closed)) return json::parse(*v).get<std::vector<std::string>>();
    std::vector<std::string> present;
    for (const auto& k : store.list(key(run, "pf/rec/"))) {
      present.push_back(k.substr(key(run, "pf/rec/").size()));
    }
    if (static_cast<int>(present.size()) >= expected || Clock::now() > deadline) {
      return json::parse(store.compare_set(closed, "", json(present).dump()))
          .get<std::vector<std::string>>();
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

// An all-reduce of known data among `round` (this member included), checked element by
// element, then the bus bandwidth of an all-reduce of `bytes`. Adds reasons to `reasons`.
void collective_checks(std::shared_ptr<Store> store, const std::string& run,
                       const std::vector<std::string>& round, const std::string& member,
                       const PreflightOptions& o, PreflightResult& r) {
  const auto me = std::find(round.begin(), round.end(), member);
  if (me == round.end() || round.size() < 2) return;
  const int rank = static_cast<int>(me - round.begin());
  const int n = static_cast<int>(round.size());
  CommOptions co;
  co.name = "health/" + run + "/pf/allreduce";
  co.timeout = o.timeout;
  co.hostname = o.hostname;
  std::shared_ptr<Communicator> comm;
  // On CUDA the data lives on the device and travels over NCCL, as training's will.
  const bool cuda = o.cuda_device >= 0;
  const at::Device dev = cuda ? at::Device(at::kCUDA, static_cast<at::DeviceIndex>(o.cuda_device))
                              : at::Device(at::kCPU);
  try {
    comm = create_communicator(cuda ? Backend::kNccl : Backend::kGloo, store, rank, n, co);
    // Rank j contributes (j + 1) · (i mod 97) at index i: the sum is n(n+1)/2 · (i mod 97),
    // exact in float32 for these sizes.
    const int64_t count = 1 << 16;
    at::Tensor t = at::arange(count, at::kLong).remainder(97).to(at::kFloat).mul_(rank + 1).to(dev);
    comm->all_reduce(t);
    t = t.to(at::kCPU);
    const at::Tensor want =
        at::arange(count, at::kLong).remainder(97).to(at::kFloat).mul_(n * (n + 1) / 2.0);
    const int64_t wrong = t.ne(want).sum().item<int64_t>();
    if (wrong > 0) {
      const int64_t first = t.ne(want).nonzero()[0][0].item<int64_t>();
      r.reasons.push_back("all-reduce of known data: " + std::to_string(wrong) + " of " +
                          std::to_string(count) + " elements wrong (first at index " +
                          std::to_string(first) + ": " + std::to_string(t[first].item<float>()) +
                          " instead of " + std::to_string(want[first].item<float>()) + ")");
      failures("allreduce").inc();
    }
    at::Tensor buf = at::zeros({o.allreduce_bytes / 4}, at::TensorOptions(at::kFloat).device(dev));
    comm->all_reduce(buf);  // warm-up
    const auto start = Clock::now();
    constexpr int kIters = 3;
    for (int i = 0; i < kIters; ++i) comm->all_reduce(buf);
    const double secs = std::chrono::duration<double>(Clock::now() - start).count() / kIters;
    r.busbw_gbps = 2.0 * (n - 1) / n * static_cast<double>(o.allreduce_bytes) / secs / 1e9;
    if (o.min_busbw_gbps > 0 && r.busbw_gbps < o.min_busbw_gbps) {
      char buf2[160];
      std::snprintf(buf2, sizeof(buf2),
                    "all-reduce bus bandwidth %.3f GB/s is below the floor of %.3f GB/s",
                    r.busbw_gbps, o.min_busbw_gbps);
      r.reasons.push_back(buf2);
      failures("bandwidth").inc();
    }
  } catch (const CommError& e) {
    // A peer that left mid-check is its own failure, not this member's.
    log(LogLevel::kWarning, "health: preflight all-reduce check among " + std::to_string(n) +
                                " members did not complete: " + e.what());
  }
}

}  // namespace

namespace {

// The GEMM's inputs: n×n float32 each from a fixed-seed xorshift, values in [-1, 1].
void gemm_inputs(int64_t n, std::vector<float>& a, std::vector<float>& b) {
  a.resize(n * n), b.resize(n * n);
  uint64_t x = 0x9E3779B97F4A7C15ull;  // fixed seed
  auto next = [&x] {
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    return static_cast<float>(static_cast<int64_t>(x % 2001) - 1000) / 1000.0f;
  };
  for (auto& v : a) v = next();
  for (auto& v : b) v = next();
}

// FNV-1a over C's bytes, after one value is moved one ulp when `corrupt`.
uint64_t checksum_of(std::vector<float>& c, bool corrupt) {
  if (corrupt) c[c.size() / 2] = std::nextafter(c[c.size() / 2], 1e30f);
  uint64_t h = 1469598103934665603ull;
  const auto* p = reinterpret_cast<const unsigned char*>(c.data());
  for (size_t i = 0; i < c.size() * sizeof(float); ++i) h = (h ^ p[i]) * 1099511628211ull;
  return h;
}

}  // namespace

uint64_t device_gemm_checksum(int64_t n, const std::string& device, bool corrupt) {
  std::vector<float> a, b;
  gemm_inputs(n, a, b);
  at::Device dev(at::kCPU);
  try {
    dev = at::Device(device);
  } catch (const std::exception&) {
    throw ConfigError("preflight GEMM: '" + device + "' is not a device (cpu or cuda:N)");
  }
  if (dev.is_cuda() && !at::hasCUDA()) {
    throw ConfigError("preflight GEMM on " + device + ": this process has no CUDA device");
  }
  const auto opts = at::TensorOptions().dtype(at::kFloat);
  at::Tensor ta = at::from_blob(a.data(), {n, n}, opts).to(dev);
  at::Tensor tb = at::from_blob(b.data(), {n, n}, opts).to(dev);
  at::Tensor tc = at::mm(ta, tb).to(at::kCPU).contiguous();
  std::vector<float> c(tc.data_ptr<float>(), tc.data_ptr<float>() + n * n);
  return checksum_of(c, corrupt);
}

uint64_t gemm_checksum(int64_t n, bool corrupt) {
  std::vector<float> a, b, c(n * n, 0.0f);
  gemm_inputs(n, a, b);
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t k = 0; k < n; ++k) {
      const float aik = a[i * n + k];
      for (int64_t j = 0; j < n; ++j) c[i * n + j] += aik * b[k * n + j];
    }
  }
  return checksum_of(c, corrupt);
}

std::vector<std::string> host_checks(const PreflightOptions& o, const FaultInjector* faults,
                                     const std::function<std::string()>& durable_probe) {
  std::vector<std::string> reasons;
  const double need = o.memory_bytes > 0 ? static_cast<double>(o.memory_bytes) : 64.0 * (1 << 20);
  const double shm = faults && faults->shm_full() ? 0 : free_bytes("/dev/shm");
  if (shm < need) {
    reasons.push_back("/dev/shm has " + mib(std::max(shm, 0.0)) + " free, the memory tier needs " +
                      mib(need));
    failures("shm").inc();
  }
  const double mem = available_memory();
  if (mem >= 0 && mem < need) {
    reasons.push_back("memory available " + mib(mem) + " < the memory tier's " + mib(need));
    failures("memory").inc();
  }
  if (!o.directory.empty()) {
    const std::string probe = o.directory + "/.tenax-preflight-" + std::to_string(getpid());
    FILE* f = std::fopen(probe.c_str(), "w");
    if (f == nullptr) {
      reasons.push_back("directory tier " + o.directory + " is not writable");
      failures("disk").inc();
    } else {
      std::fclose(f);
      std::remove(probe.c_str());
      const double room = free_bytes(o.directory);
      if (o.disk_bytes > 0 && room < static_cast<double>(o.disk_bytes)) {
        reasons.push_back("directory tier " + o.directory + " has " + mib(room) + " free, " +
                          mib(static_cast<double>(o.disk_bytes)) + " needed");
        failures("disk").inc();
      }
    }
  }
  if (durable_probe) {
    const std::string why = durable_probe();
    if (!why.empty()) {
      reasons.push_back("durable tier unreachable: " + why);
      failures("durable").inc();
    }
  }
  return reasons;
}

PreflightResult run_preflight(std::shared_ptr<Store> store, const std::string& run,
                              const std::string& member, const std::string& host,
                              const PreflightOptions& o, const FaultInjector* faults,
                              const std::function<std::string()>& durable_probe) {
  const auto start = Clock::now();
  const auto deadline = start + o.timeout;
  PreflightResult r;
  if (auto q = store->try_get("health/quarantine/" + host)) {
    r.reasons.push_back("host " + host + " is quarantined (" + *q +
                        "); clear it with `tenax-health clear --host " + host + "`");
    failures("quarantine").inc();
  }
  for (auto& why : host_checks(o, faults, durable_probe)) r.reasons.push_back(std::move(why));
  const bool sdc = faults && faults->sdc_in_gemm();
  r.gemm_checksum =
      o.cuda_device >= 0
          ? device_gemm_checksum(o.gemm_size, "cuda:" + std::to_string(o.cuda_device), sdc)
          : gemm_checksum(o.gemm_size, sdc);
  char hex[20];
  std::snprintf(hex, sizeof(hex), "%016llx", (unsigned long long)r.gemm_checksum);
  const std::string checksum = hex;
  store->set(key(run, "pf/rec/" + member), json{{"host", host}, {"gemm", checksum}}.dump());

  const std::vector<std::string> round =
      close_round(*store, run, std::max(1, o.expected), deadline);
  // The clock: each member of the round writes its time once the round is closed (they see it
  // close within a poll of each other); a host off the median by more than the limit fails.
  // A member restarted later repeats only the checks it can do alone.
  const bool repeat = store->try_get(key(run, "pf/clock/" + member)).has_value();
  store->set(key(run, "pf/clock/" + member), std::to_string(unix_now()));
  // The GEMM against every record so far (later members compare with the first ones too).
  std::map<std::string, int> votes;
  int records = 0;
  for (const auto& k : store->list(key(run, "pf/rec/"))) {
    auto v = store->try_get(k);
    if (!v) continue;
    ++votes[json::parse(*v)["gemm"].get<std::string>()];
    ++records;
  }
  std::string majority;
  int most = 0;
  for (const auto& [sum, n] : votes) {
    if (n > most) most = n, majority = sum;
  }
  if (checksum != majority && 2 * most > records) {
    r.reasons.push_back("GEMM checksum " + checksum + " differs from the " + std::to_string(most) +
                        " of " + std::to_string(records) + " members that agree (" + majority +
                        "): suspected silent data corruption");
    failures("gemm").inc();
  }
  if (!repeat) collective_checks(store, run, round, member, o, r);
  if (!repeat) {
    std::vector<double> clocks;
    double mine = 0;
    for (const auto& m : round) {
      auto v = store->try_get(key(run, "pf/clock/" + m));
      if (!v) continue;
      clocks.push_back(std::stod(*v));
      if (m == member) mine = clocks.back();
    }
    if (clocks.size() >= 2 && mine > 0) {
      std::sort(clocks.begin(), clocks.end());
      r.clock_offset_ms = (mine - clocks[clocks.size() / 2]) * 1000;
      if (std::abs(r.clock_offset_ms) > static_cast<double>(o.max_clock_offset.count())) {
        r.reasons.push_back("clock offset " +
                            std::to_string(static_cast<int64_t>(r.clock_offset_ms)) +
                            " ms from the members' median (limit " +
                            std::to_string(o.max_clock_offset.count()) + " ms)");
        failures("clock").inc();
      }
    }
  }
  r.passed = r.reasons.empty();
  r.seconds = std::chrono::duration<double>(Clock::now() - start).count();
  if (!r.passed) {
    std::string all;
    for (const auto& why : r.reasons) all += (all.empty() ? "" : "; ") + why;
    store->set(key(run, "failed/" + member), json{{"host", host}, {"reasons", r.reasons}}.dump());
    record_host_failure(*store, host, member + ": " + all, o.quarantine_window);
  }
  return r;
}

std::vector<std::string> kept_out(Store& store, const std::string& run) {
  std::vector<std::string> out;
  const std::string prefix = key(run, "failed/");
  for (const auto& k : store.list(prefix)) {
    auto v = store.try_get(k);
    if (!v) continue;
    const json j = json::parse(*v);
    std::string line = k.substr(prefix.size()) + " on " + j.value("host", "?") + ": ";
    bool first = true;
    for (const auto& why : j["reasons"]) {
      line += (first ? "" : "; ") + why.get<std::string>();
      first = false;
    }
    out.push_back(line);
  }
  return out;
}

std::vector<std::pair<std::string, std::string>> quarantined_hosts(Store& store) {
  std::vector<std::pair<std::string, std::string>> out;
  const std::string prefix = "health/quarantine/";
  for (const auto& k : store.list(prefix)) {
    if (auto v = store.try_get(k)) out.emplace_back(k.substr(prefix.size()), *v);
  }
  return out;
}

bool clear_quarantine(Store& store, const std::string& host) {
  store.delete_key("health/failures/" + host);
  return store.delete_key("health/quarantine/" + host);
}

std::string to_string(StragglerPolicy p) {
  return p == StragglerPolicy::kOff ? "off" : p == StragglerPolicy::kReport ? "report" : "evict";
}

std::string to_string(NonFinitePolicy p) {
  return p == NonFinitePolicy::kOff ? "off" : p == NonFinitePolicy::kSkip ? "skip" : "rollback";
}

StragglerPolicy parse_straggler_policy(const std::string& value, const std::string& what) {
  for (auto p : {StragglerPolicy::kOff, StragglerPolicy::kReport, StragglerPolicy::kEvict}) {
    if (to_string(p) == value) return p;
  }
  throw ConfigError(what + " '" + value + "' is not a policy (expected off, report or evict)");
}

NonFinitePolicy parse_nonfinite_policy(const std::string& value, const std::string& what) {
  for (auto p : {NonFinitePolicy::kOff, NonFinitePolicy::kSkip, NonFinitePolicy::kRollback}) {
    if (to_string(p) == value) return p;
  }
  throw ConfigError(what + " '" + value + "' is not a policy (expected off, skip or rollback)");
}

}  // namespace tenax
