// The metrics registry and its text exposition, the time accounting behind goodput, and JSON
// log lines, in one process. Each test uses a registry of its own (or metric names no other
// test uses), so they do not depend on order.

#include "tenax/core/metrics.h"

#include <gtest/gtest.h>

#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <thread>
#include <vector>

#include "tenax/core/error.h"
#include "tenax/core/logging.h"
#include "tenax/core/time_use.h"

namespace {

using namespace tenax::metrics;

TEST(MetricsTest, CounterGaugeAndHistogramRenderInTheTextFormat) {
  Registry r;
  r.counter("t_requests_total", "Requests").inc(3);
  r.family("t_temperature", "Degrees", Type::kGauge, {"room"}).gauge({"kitchen"}).set(21.5);
  Histogram& h =
      r.family("t_latency_seconds", "Latency", Type::kHistogram, {}, {0.1, 1}).histogram();
  h.observe(0.05);
  h.observe(0.5);
  h.observe(7);
  EXPECT_EQ(r.render(),
            "# HELP t_requests_total Requests\n"
            "# TYPE t_requests_total counter\n"
            "t_requests_total 3\n"
            "# HELP t_temperature Degrees\n"
            "# TYPE t_temperature gauge\n"
            "t_temperature{room=\"kitchen\"} 21.5\n"
            "# HELP t_latency_seconds Latency\n"
            "# TYPE t_latency_seconds histogram\n"
            "t_latency_seconds_bucket{le=\"0.1\"} 1\n"
            "t_latency_seconds_bucket{le=\"1\"} 2\n"
            "t_latency_seconds_bucket{le=\"+Inf\"} 3\n"
            "t_latency_seconds_sum 7.55\n"
            "t_latency_seconds_count 3\n");
}

TEST(MetricsTest, ConstantLabelsComeFirstOnEverySeriesAndCanBeReplacedOrRemoved) {
  Registry r;
  r.family("t_ops_total", "Ops", Type::kCounter, {"op"}).counter({"send"}).inc();
  r.set_constant_label("job", "train");
  r.set_constant_label("rank", "3");
  EXPECT_NE(r.render().find("t_ops_total{job=\"train\",rank=\"3\",op=\"send\"} 1\n"),
            std::string::npos)
      << r.render();
  r.set_constant_label("rank", "1");
  r.set_constant_label("job", "");
  EXPECT_NE(r.render().find("t_ops_total{rank=\"1\",op=\"send\"} 1\n"), std::string::npos)
      << r.render();
}

TEST(MetricsTest, LabelValuesAreEscaped) {
  Registry r;
  r.family("t_x", "X", Type::kGauge, {"path"}).gauge({"a\"b\\c\nd"}).set(1);
  EXPECT_NE(r.render().find("t_x{path=\"a\\\"b\\\\c\\nd\"} 1"), std::string::npos) << r.render();
}

TEST(MetricsTest, TheSameNameReturnsTheSameFamilyAndAConflictingOneIsAConfigError) {
  Registry r;
  Family& a = r.family("t_y_total", "Y", Type::kCounter, {"k"});
  EXPECT_EQ(&a, &r.family("t_y_total", "Y", Type::kCounter, {"k"}));
  EXPECT_THROW(r.family("t_y_total", "Y", Type::kGauge, {"k"}), tenax::ConfigError);
  EXPECT_THROW(r.family("t_y_total", "Y", Type::kCounter, {"other"}), tenax::ConfigError);
  EXPECT_THROW(r.family("9bad", "", Type::kGauge), tenax::ConfigError);
  EXPECT_THROW(r.family("t_z", "", Type::kGauge, {"le-x"}), tenax::ConfigError);
  EXPECT_THROW(a.counter({}), tenax::ConfigError);   // one value per label
  EXPECT_THROW(a.gauge({"v"}), tenax::ConfigError);  // not a gauge
  EXPECT_EQ(&a.counter({"v"}), &a.counter({"v"}));   // one series per label values
}

TEST(MetricsTest, CounterIgnoresNegativeIncrementsAndGaugeGoesBothWays) {
  Counter c;
  c.inc(2);
  c.inc(-5);
  EXPECT_EQ(c.value(), 2);
  Gauge g;
  g.add(3);
  g.add(-4.5);
  EXPECT_EQ(g.value(), -1.5);
}

TEST(MetricsTest, ConcurrentRecordsAreAllCounted) {
  Registry r;
  Counter& c = r.counter("t_hits_total", "Hits");
  Histogram& h = r.family("t_h_seconds", "H", Type::kHistogram).histogram();
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 100000; ++i) {
        c.inc();
        h.observe(0.001);
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(c.value(), 400000);
  EXPECT_EQ(h.count(), 400000u);
  EXPECT_EQ(h.cumulative_counts().back(), 400000u);
}

TEST(MetricsTest, CollectorsRunAtEachRenderUntilRemoved) {
  Registry r;
  Gauge& g = r.gauge("t_calls", "Renders");
  int calls = 0;
  const int id = r.add_collector([&] { g.set(++calls); });
  EXPECT_NE(r.render().find("t_calls 1\n"), std::string::npos);
  EXPECT_NE(r.render().find("t_calls 2\n"), std::string::npos);
  r.remove_collector(id);
  r.render();
  EXPECT_EQ(calls, 2);
}

// Prometheus' own parser and linter (promtool, from Debian's prometheus package) accepts what
// the process registry renders once every layer's series exist.
TEST(MetricsTest, TheProcessRegistryPassesPromtoolCheckMetrics) {
  if (std::system("command -v promtool >/dev/null 2>&1") != 0) GTEST_SKIP() << "no promtool";
  tenax::account_time(tenax::TimeUse::kProductive, 1.5);
  registry().set_constant_label("job", "check");
  registry()
      .family("t_check_seconds", "A histogram", Type::kHistogram, {"op"})
      .histogram({"all_reduce"})
      .observe(0.002);
  const std::string path = ::testing::TempDir() + "/metrics.txt";
  std::ofstream(path) << registry().render();
  const std::string out = path + ".out";
  const int rc = std::system(("promtool check metrics < " + path + " > " + out + " 2>&1").c_str());
  std::ifstream in(out);
  const std::string said((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_EQ(rc, 0) << said;
  EXPECT_EQ(said, "");  // no lint complaint either
}

TEST(TimeUseTest, AccountedSecondsAddUpPerUseAndNonPositiveOnesAreIgnored) {
  const double before = tenax::accounted_time(tenax::TimeUse::kEvaluation);
  tenax::account_time(tenax::TimeUse::kEvaluation, 0.25);
  tenax::account_time(tenax::TimeUse::kEvaluation, -3);
  EXPECT_DOUBLE_EQ(tenax::accounted_time(tenax::TimeUse::kEvaluation), before + 0.25);
  EXPECT_NE(registry().render().find("tenax_badput_seconds_total{"), std::string::npos);
  EXPECT_GT(tenax::process_seconds(), 0);
}

TEST(JsonLogTest, ALineIsOneJsonObjectWithTheContextTheStepAndTheFields) {
  tenax::set_log_context("rank", "2");
  tenax::set_log_context("host", "h\"1");
  tenax::set_log_step(17);
  const std::string line =
      tenax::json_log_line(tenax::LogLevel::kWarning, "a \"quoted\"\nmessage", {{"loss", "2.5"}});
  const auto j = nlohmann::json::parse(line);
  EXPECT_EQ(j["level"], "warning");
  EXPECT_EQ(j["msg"], "a \"quoted\"\nmessage");
  EXPECT_EQ(j["rank"], 2);
  EXPECT_EQ(j["host"], "h\"1");
  EXPECT_EQ(j["step"], 17);
  EXPECT_EQ(j["loss"], 2.5);
  EXPECT_EQ(j["ts"].get<std::string>().size(), 24u);  // 2026-11-30T03:04:05.678Z
  tenax::set_log_context("host", "");
  EXPECT_FALSE(
      nlohmann::json::parse(tenax::json_log_line(tenax::LogLevel::kInfo, "x")).contains("host"));
}

}  // namespace
