#include "tenax/core/metrics.h"

#include <algorithm>
#include <charconv>
#include <cmath>

#include "tenax/core/error.h"

namespace tenax::metrics {
namespace {

void atomic_add(std::atomic<double>& a, double v) noexcept {
  double cur = a.load(std::memory_order_relaxed);
  while (!a.compare_exchange_weak(cur, cur + v, std::memory_order_relaxed)) {
  }
}

void append_number(std::string& out, double v) {
  if (std::isnan(v)) {
    out += "NaN";
  } else if (std::isinf(v)) {
    out += v > 0 ? "+Inf" : "-Inf";
  } else {
    char buf[32];
    auto r = std::to_chars(buf, buf + sizeof(buf), v);
    out.append(buf, r.ptr);
  }
}

bool valid_name(const std::string& n, bool allow_colon) {
  if (n.empty()) return false;
  for (size_t i = 0; i < n.size(); ++i) {
    const char c = n[i];
    const bool alpha =
        (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || (allow_colon && c == ':');
    if (!alpha && !(i > 0 && c >= '0' && c <= '9')) return false;
  }
  return n.rfind("__", 0) != 0;
}

const char* type_name(Type t) {
  switch (t) {
    case Type::kCounter:
      return "counter";
    case Type::kGauge:
      return "gauge";
    case Type::kHistogram:
      return "histogram";
  }
  return "untyped";
}

// Backslash and newline escaped (and double quote, in label values).
std::string escape(const std::string& v, bool quote) {
  std::string out;
  out.reserve(v.size());
  for (char c : v) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '\n') {
      out += "\\n";
    } else if (quote && c == '"') {
      out += "\\\"";
    } else {
      out += c;
    }
  }
  return out;
}

std::string escape_help(const std::string& h) { return escape(h, false); }

}  // namespace

std::string escape_label_value(const std::string& v) { return escape(v, true); }

void Counter::inc(double v) noexcept {
  if (v > 0) atomic_add(v_, v);
}

void Gauge::add(double v) noexcept { atomic_add(v_, v); }

Histogram::Histogram(std::vector<double> bounds)
    : bounds_(std::move(bounds)), buckets_(new std::atomic<uint64_t>[bounds_.size() + 1]) {
  for (size_t i = 0; i <= bounds_.size(); ++i) buckets_[i].store(0, std::memory_order_relaxed);
}

void Histogram::observe(double v) noexcept {
  const size_t i = std::lower_bound(bounds_.begin(), bounds_.end(), v) - bounds_.begin();
  buckets_[i].fetch_add(1, std::memory_order_relaxed);
  atomic_add(sum_, v);
  count_.fetch_add(1, std::memory_order_relaxed);
}

std::vector<uint64_t> Histogram::cumulative_counts() const {
  std::vector<uint64_t> out(bounds_.size() + 1);
  uint64_t total = 0;
  for (size_t i = 0; i <= bounds_.size(); ++i) {
    total += buckets_[i].load(std::memory_order_relaxed);
    out[i] = total;
  }
  return out;
}

const std::vector<double>& latency_buckets() {
  static const std::vector<double> b = {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005,
                                        0.01,   0.025,   0.05,   0.1,   0.25,   0.5,
                                        1,      2.5,     5,      10,    30,     60};
  return b;
}

struct Family::Series {
  LabelValues values;
  std::string labels;  // rendered: k="v",k2="v2"
  Counter counter;
  Gauge gauge;
  std::unique_ptr<Histogram> histogram;
};

Family::Family(std::string name, std::string help, Type type, std::vector<std::string> label_names,
               std::vector<double> bounds)
    : name_(std::move(name)),
      help_(std::move(help)),
      type_(type),
      label_names_(std::move(label_names)),
      bounds_(type == Type::kHistogram && bounds.empty() ? latency_buckets() : std::move(bounds)) {}

Family::Series& Family::find(const LabelValues& values, Type want) {
  if (want != type_) {
    throw ConfigError("metric " + name_ + " is a " + type_name(type_) + ", not a " +
                      type_name(want));
  }
  if (values.size() != label_names_.size()) {
    throw ConfigError("metric " + name_ + " takes " + std::to_string(label_names_.size()) +
                      " label values, got " + std::to_string(values.size()));
  }
  std::lock_guard<std::mutex> lock(mu_);
  for (auto& s : series_) {
    if (s->values == values) return *s;
  }
  auto s = std::make_unique<Series>();
  s->values = values;
  for (size_t i = 0; i < values.size(); ++i) {
    if (i > 0) s->labels += ',';
    s->labels += label_names_[i] + "=\"" + escape_label_value(values[i]) + "\"";
  }
  if (type_ == Type::kHistogram) s->histogram = std::make_unique<Histogram>(bounds_);
  series_.push_back(std::move(s));
  return *series_.back();
}

Counter& Family::counter(const LabelValues& values) { return find(values, Type::kCounter).counter; }
Gauge& Family::gauge(const LabelValues& values) { return find(values, Type::kGauge).gauge; }
Histogram& Family::histogram(const LabelValues& values) {
  return *find(values, Type::kHistogram).histogram;
}

void Family::render(std::string& out, const std::string& constant) const {
  std::lock_guard<std::mutex> lock(mu_);
  if (series_.empty()) return;
  out += "# HELP " + name_ + " " + escape_help(help_) + "\n";
  out += "# TYPE " + name_ + " " + type_name(type_) + "\n";
  // constant starts with ','; the braces' content is constant (less its comma) then labels.
  auto braces = [&](const std::string& labels, const std::string& extra) {
    std::string in = constant.empty() ? std::string() : constant.substr(1);
    for (const std::string* part : {&labels, &extra}) {
      if (part->empty()) continue;
      if (!in.empty()) in += ',';
      in += *part;
    }
    return in.empty() ? std::string() : "{" + in + "}";
  };
  for (const auto& s : series_) {
    if (type_ != Type::kHistogram) {
      out += name_ + braces(s->labels, "") + " ";
      append_number(out, type_ == Type::kCounter ? s->counter.value() : s->gauge.value());
      out += '\n';
      continue;
    }
    const Histogram& h = *s->histogram;
    const std::vector<uint64_t> cum = h.cumulative_counts();
    for (size_t i = 0; i < cum.size(); ++i) {
      std::string le = "le=\"";
      if (i < bounds_.size()) {
        append_number(le, bounds_[i]);
      } else {
        le += "+Inf";
      }
      le += '"';
      out += name_ + "_bucket" + braces(s->labels, le) + " " + std::to_string(cum[i]) + "\n";
    }
    out += name_ + "_sum" + braces(s->labels, "") + " ";
    append_number(out, h.sum());
    out +=
        "\n" + name_ + "_count" + braces(s->labels, "") + " " + std::to_string(cum.back()) + "\n";
  }
}

Registry::Registry() = default;
Registry::~Registry() = default;

Family& Registry::family(const std::string& name, const std::string& help, Type type,
                         std::vector<std::string> label_names, std::vector<double> bounds) {
  std::lock_guard<std::mutex> lock(mu_);
  for (auto& f : families_) {
    if (f->name() != name) continue;
    if (f->type() != type || f->label_names() != label_names) {
      throw ConfigError("metric " + name + " is already registered as a " + type_name(f->type()) +
                        " with other labels");
    }
    return *f;
  }
  if (!valid_name(name, /*allow_colon=*/true)) {
    throw ConfigError("'" + name + "' is not a valid metric name");
  }
  for (const auto& l : label_names) {
    if (!valid_name(l, false) || l == "le") {
      throw ConfigError("metric " + name + ": '" + l + "' is not a valid label name");
    }
  }
  if (!std::is_sorted(bounds.begin(), bounds.end())) {
    throw ConfigError("metric " + name + ": bucket bounds must be ascending");
  }
  families_.push_back(
      std::make_unique<Family>(name, help, type, std::move(label_names), std::move(bounds)));
  return *families_.back();
}

void Registry::set_constant_label(const std::string& name, const std::string& value) {
  if (!valid_name(name, false)) throw ConfigError("'" + name + "' is not a valid label name");
  std::lock_guard<std::mutex> lock(mu_);
  auto it = std::find_if(constant_.begin(), constant_.end(),
                         [&](const auto& kv) { return kv.first == name; });
  if (value.empty()) {
    if (it != constant_.end()) constant_.erase(it);
  } else if (it != constant_.end()) {
    it->second = value;
  } else {
    constant_.emplace_back(name, value);
  }
}

std::vector<std::pair<std::string, std::string>> Registry::constant_labels() const {
  std::lock_guard<std::mutex> lock(mu_);
  return constant_;
}

int Registry::add_collector(std::function<void()> fn) {
  std::lock_guard<std::mutex> lock(mu_);
  collectors_.emplace_back(next_collector_, std::move(fn));
  return next_collector_++;
}

void Registry::remove_collector(int id) {
  std::lock_guard<std::mutex> render(render_mu_);  // not while one runs
  std::lock_guard<std::mutex> lock(mu_);
  collectors_.erase(std::remove_if(collectors_.begin(), collectors_.end(),
                                   [&](const auto& c) { return c.first == id; }),
                    collectors_.end());
}

std::string Registry::render() const {
  std::lock_guard<std::mutex> render(render_mu_);
  std::vector<std::function<void()>> collectors;
  std::string constant;
  std::vector<Family*> families;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (const auto& c : collectors_) collectors.push_back(c.second);
    for (const auto& [k, v] : constant_) constant += "," + k + "=\"" + escape_label_value(v) + "\"";
  }
  for (const auto& c : collectors) c();
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (const auto& f : families_) families.push_back(f.get());
  }
  std::string out;
  out.reserve(16384);
  for (const Family* f : families) f->render(out, constant);
  return out;
}

Registry& registry() {
  static Registry* r = new Registry();  // never destroyed: threads may record until exit
  return *r;
}

}  // namespace tenax::metrics
