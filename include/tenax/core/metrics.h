#pragma once

// A process-wide registry of metrics (counters, gauges, histograms with fixed buckets), rendered
// in Prometheus' text exposition format 0.0.4. Every layer records here; the HTTP endpoint that
// serves render() lives in tenax/observe/.
//
// Cost: find a series once (Family::counter(...) takes a lock and may allocate) and keep the
// reference; recording on it afterwards is one or two relaxed atomic operations, no lock, no
// allocation. References stay valid for the life of the process.
//
// Constant labels (job, rank, host, generation, dp/tp/pp coordinates) are set on the registry and
// added to every series when it is rendered, so the hot path never carries them.

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "tenax/core/export.h"

namespace tenax::metrics {

using LabelValues = std::vector<std::string>;

// Thread rules: every recording (inc, set, add, observe) and every read is an atomic operation:
// any thread, any time. Families and the registry guard their series with a mutex: lookups and
// rendering from any thread. Series, families and the registry are never destroyed while the
// process runs (registry()), so a pointer to one stays valid.

// Monotonic: only grows (a negative increment is ignored).
class TENAX_API Counter {
 public:
  void inc(double v = 1) noexcept;
  double value() const noexcept { return v_.load(std::memory_order_relaxed); }

 private:
  std::atomic<double> v_{0};
};

class TENAX_API Gauge {
 public:
  void set(double v) noexcept { v_.store(v, std::memory_order_relaxed); }
  void add(double v) noexcept;
  double value() const noexcept { return v_.load(std::memory_order_relaxed); }

 private:
  std::atomic<double> v_{0};
};

// Counts observations into fixed buckets (upper bounds, ascending; +Inf is implicit).
class TENAX_API Histogram {
 public:
  explicit Histogram(std::vector<double> bounds);
  void observe(double v) noexcept;
  const std::vector<double>& bounds() const { return bounds_; }
  // Observations <= bounds()[i] (cumulative, as exposed); the last element counts all of them.
  std::vector<uint64_t> cumulative_counts() const;
  double sum() const noexcept { return sum_.load(std::memory_order_relaxed); }
  uint64_t count() const noexcept { return count_.load(std::memory_order_relaxed); }

 private:
  std::vector<double> bounds_;
  std::unique_ptr<std::atomic<uint64_t>[]> buckets_;  // bounds_.size() + 1 (the last: +Inf)
  std::atomic<double> sum_{0};
  std::atomic<uint64_t> count_{0};
};

enum class Type { kCounter, kGauge, kHistogram };

// Bucket bounds in seconds for operation latencies: 100 µs to 60 s.
TENAX_API const std::vector<double>& latency_buckets();

// All series of one metric name: one per combination of label values.
class TENAX_API Family {
 public:
  Family(std::string name, std::string help, Type type, std::vector<std::string> label_names,
         std::vector<double> bounds);
  Family(const Family&) = delete;
  Family& operator=(const Family&) = delete;

  // The series with these label values (one per label name, in order), created on first use.
  // Throws ConfigError naming the metric when the count of values is wrong or the type differs.
  Counter& counter(const LabelValues& values = {});
  Gauge& gauge(const LabelValues& values = {});
  Histogram& histogram(const LabelValues& values = {});

  const std::string& name() const { return name_; }
  Type type() const { return type_; }
  const std::vector<std::string>& label_names() const { return label_names_; }

  // Appends the family in the text format; `constant` is ",k=\"v\"..." put before its labels.
  void render(std::string& out, const std::string& constant) const;

 private:
  struct Series;
  Series& find(const LabelValues& values, Type want);

  const std::string name_, help_;
  const Type type_;
  const std::vector<std::string> label_names_;
  const std::vector<double> bounds_;
  mutable std::mutex mu_;
  std::vector<std::unique_ptr<Series>> series_;  // guarded by mu_; elements never move
};

class TENAX_API Registry {
 public:
  Registry();
  ~Registry();
  Registry(const Registry&) = delete;
  Registry& operator=(const Registry&) = delete;

  // The family named `name`, created on first call; later calls return the same one. Names
  // follow Prometheus' conventions (counters end in _total, units in the name: _seconds,
  // _bytes). Throws ConfigError when `name` or a label name is not a valid Prometheus name, or
  // when a family of that name exists with another type or other labels.
  Family& family(const std::string& name, const std::string& help, Type type,
                 std::vector<std::string> label_names = {}, std::vector<double> bounds = {});
  Counter& counter(const std::string& name, const std::string& help) {
    return family(name, help, Type::kCounter).counter();
  }
  Gauge& gauge(const std::string& name, const std::string& help) {
    return family(name, help, Type::kGauge).gauge();
  }

  // Sets (or, with an empty value, removes) a label added to every series at render time.
  void set_constant_label(const std::string& name, const std::string& value);
  std::vector<std::pair<std::string, std::string>> constant_labels() const;

  // `fn` runs at the start of every render() (to refresh gauges read from the system); returns
  // an id for remove_collector.
  int add_collector(std::function<void()> fn);
  void remove_collector(int id);

  // Every family, in the order they were created, in the text exposition format 0.0.4.
  std::string render() const;

 private:
  mutable std::mutex mu_;
  std::vector<std::unique_ptr<Family>> families_;              // guarded by mu_
  std::vector<std::pair<std::string, std::string>> constant_;  // guarded by mu_
  std::vector<std::pair<int, std::function<void()>>> collectors_;
  int next_collector_ = 0;
  mutable std::mutex render_mu_;  // one render at a time (collectors run once per render)
};

// The process's registry.
TENAX_API Registry& registry();

// Escapes a label value for the text format (backslash, double quote, newline).
TENAX_API std::string escape_label_value(const std::string& v);

}  // namespace tenax::metrics
