// A real Prometheus server (Debian's prometheus package) scrapes a 4-rank elastic training job
// on loopback through tenaxrun's host endpoint; every panel of both Grafana dashboards is run
// through Prometheus' HTTP API and must return data; a rank is killed and the recovery shows.

#include <gtest/gtest.h>
#include <httplib.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <thread>

#include "support/process.h"
#include "tenax/checkpoint/engine.h"
#include "tenax/observe/exposition.h"

namespace {

using nlohmann::json;
using Clock = std::chrono::steady_clock;
using tenax::testing::free_port;
using tenax::testing::Process;
using tenax::testing::run_command;

const char* const kJob = "promtest";

std::string read_file(const std::string& path) {
  std::ifstream in(path);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

// Prometheus on a free loopback port, scraping `target` every second; removed with its data.
class Prometheus {
 public:
  explicit Prometheus(const std::string& target) {
    dir_ = ::testing::TempDir() + "/prometheus." + std::to_string(getpid());
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
    std::ofstream(dir_ + "/prometheus.yml")
        << "global:\n  scrape_interval: 1s\n  scrape_timeout: 900ms\n  evaluation_interval: 1s\n"
        << "scrape_configs:\n  - job_name: tenax\n    honor_labels: true\n"
        << "    static_configs:\n      - targets: ['" << target << "']\n";
    port_ = free_port();
    server_ = std::make_unique<Process>(
        std::vector<std::string>{"prometheus", "--config.file=" + dir_ + "/prometheus.yml",
                                 "--storage.tsdb.path=" + dir_ + "/data",
                                 "--web.listen-address=127.0.0.1:" + std::to_string(port_),
                                 "--log.level=warn"},
        std::map<std::string, std::string>{});
    const auto deadline = Clock::now() + std::chrono::seconds(60);
    while (Clock::now() < deadline) {
      httplib::Client c("127.0.0.1", port_);
      c.set_connection_timeout(1);
      auto r = c.Get("/-/ready");
      if (r && r->status == 200) return;
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
    }
    ADD_FAILURE() << "prometheus did not get ready: " << server_->output();
  }
  ~Prometheus() {
    server_->kill(SIGTERM);
    if (server_->wait(std::chrono::seconds(20)) < 0) server_->kill(SIGKILL);
    std::filesystem::remove_all(dir_);
  }

  // An instant query; the "result" array (empty when the query failed, with the error logged).
  json query(const std::string& expr) {
    httplib::Client c("127.0.0.1", port_);
    c.set_read_timeout(10);
    auto r = c.Post("/api/v1/query", httplib::Params{{"query", expr}});
    if (!r || r->status != 200) {
      ADD_FAILURE() << expr << ": " << (r ? r->body : "no answer");
      return json::array();
    }
    return json::parse(r->body)["data"]["result"];
  }
  // The largest value of an instant query's series (-1 when there is none).
  double max_of(const std::string& expr) {
    double best = -1;
    for (const auto& s : query(expr))
      best = std::max(best, std::stod(s["value"][1].get<std::string>()));
    return best;
  }
  json query_range(const std::string& expr, double start, double end) {
    httplib::Client c("127.0.0.1", port_);
    c.set_read_timeout(10);
    auto r = c.Post("/api/v1/query_range", httplib::Params{{"query", expr},
                                                           {"start", std::to_string(start)},
                                                           {"end", std::to_string(end)},
                                                           {"step", "1"}});
    if (!r || r->status != 200) {
      ADD_FAILURE() << expr << ": " << (r ? r->body : "no answer");
      return json::array();
    }
    return json::parse(r->body)["data"]["result"];
  }
  std::string output() const { return server_->output(); }

 private:
  std::string dir_;
  int port_ = 0;
  std::unique_ptr<Process> server_;
};

double unix_now() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

// Polls until `ok()` or the deadline; false on timeout.
template <class F>
bool eventually(std::chrono::seconds limit, F ok) {
  const auto deadline = Clock::now() + limit;
  while (Clock::now() < deadline) {
    if (ok()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
  }
  return false;
}

// A dashboard's PromQL with its template variables set as Grafana would for this job.
std::string expand(std::string expr) {
  for (const auto& [var, value] :
       {std::pair<std::string, std::string>{"$job", kJob}, {"$host", ".+"}}) {
    for (size_t at; (at = expr.find(var)) != std::string::npos;)
      expr.replace(at, var.size(), value);
  }
  return expr;
}

TEST(PrometheusTest, EveryDashboardPanelHasDataAndAKilledRankShowsAsOneRecovery) {
  if (std::system("command -v prometheus >/dev/null 2>&1") != 0) {
    GTEST_SKIP() << "prometheus is not installed (Debian package prometheus)";
  }
  // tenaxrun serves on metrics_port and starts its workers on metrics_port + 1 + local rank:
  // five ports, none of which the kernel may hand to another process meanwhile (a worker whose
  // port was taken by a connection of a test running beside this one exited with status 2).
  const int metrics_port = tenax::testing::free_port_block(5);
  ASSERT_GT(metrics_port, 0) << "no 5 consecutive free ports below the ephemeral range";
  Prometheus prom("127.0.0.1:" + std::to_string(metrics_port));
  const std::string events = ::testing::TempDir() + "/events." + std::to_string(getpid());
  std::filesystem::remove(events);
  Process job({TENAXRUN,
               "--nproc-per-node",
               "4",
               "--max-restarts",
               "0",
               "--metrics-port",
               std::to_string(metrics_port),
               LLAMA_TRAIN,
               "--elastic",
               "--min-workers",
               "3",
               "--preset",
               "tiny",
               "--global-batch",
               "24",
               "--steps",
               "3000",
               "--log-interval",
               "10",
               "--data",
               std::string(LLAMA_CORPUS) + "/train.bin",
               "--ckpt-run",
               "promtest-" + std::to_string(getpid())},
              {{"TENAX_JOB", kJob},
               {"TENAX_FAULT", "kill@60:rank=3"},
               {"TENAX_EVENTS_FILE", events},
               {"TENAX_LOG_FORMAT", "json"}});
  const double began = unix_now();

  // Training, scraped, before the kill: no recovery yet.
  ASSERT_TRUE(eventually(std::chrono::seconds(120),
                         [&] {
                           return prom.max_of("count(tenax_train_step{job=\"promtest\"})") == 4 &&
                                  prom.max_of("min(tenax_train_step{job=\"promtest\"})") >= 5;
                         }))
      << job.output() << prom.output();
  EXPECT_EQ(prom.max_of("max(tenax_recoveries_total{job=\"promtest\",cause=\"failure\"})"), 0);

  // The host endpoint's exposition passes Prometheus' own parser and linter, and is fast.
  const auto t0 = Clock::now();
  auto scrape = tenax::observe::fetch_metrics("127.0.0.1", metrics_port, 5000);
  const double scrape_ms = std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
  ASSERT_TRUE(scrape.has_value());
  const std::string path = events + ".metrics";
  std::ofstream(path) << *scrape;
  auto check = run_command({"sh", "-c", "promtool check metrics < " + path});
  EXPECT_EQ(check.exit_code, 0) << check.output;
  EXPECT_EQ(check.output, "") << check.output;
  std::printf("scrape of the 4-rank job through tenaxrun: %.1f ms, %zu bytes\n", scrape_ms,
              scrape->size());

  // Rank 3 dies at step 60: the others recover, once, and each phase is recorded.
  ASSERT_TRUE(eventually(std::chrono::seconds(120), [&] {
    return prom.max_of("max(tenax_recoveries_total{job=\"promtest\",cause=\"failure\"})") >= 1;
  })) << job.output();
  // Rate windows need a few scrapes of the new generation's series.
  ASSERT_TRUE(eventually(std::chrono::seconds(60), [&] {
    return prom.max_of("min(count_over_time(tenax_train_step{job=\"promtest\"}[1m]))") >= 6 &&
           prom.max_of("count(tenax_train_step{job=\"promtest\"})") == 3;
  })) << job.output();
  EXPECT_EQ(prom.max_of("max(tenax_recoveries_total{job=\"promtest\",cause=\"failure\"})"), 1);
  for (const char* phase : {"detect", "rendezvous", "restore", "first_step", "total"}) {
    EXPECT_GT(prom.max_of(std::string("max(tenax_recovery_phase_seconds_count{job=\"promtest\","
                                      "phase=\"") +
                          phase + "\"})"),
              0)
        << phase;
  }
  EXPECT_EQ(prom.max_of("max(tenax_elastic_world_size{job=\"promtest\"})"), 3);

  // Every panel's every query returns data.
  int queries = 0;
  double first_mark = 1e300;
  for (const char* name : {"tenax-task.json", "tenax-cluster.json"}) {
    const json board = json::parse(read_file(std::string(DASHBOARDS_DIR) + "/" + name));
    for (const auto& panel : board["panels"]) {
      for (const auto& target : panel["targets"]) {
        const std::string expr = expand(target["expr"]);
        EXPECT_FALSE(prom.query(expr).empty())
            << name << ": panel '" << panel["title"].get<std::string>() << "': " << expr;
        ++queries;
      }
    }
    // The recovery annotation fires in the run, and not before the failure (checked below).
    for (const auto& a : board["annotations"]["list"]) {
      const json marks = prom.query_range(expand(a["expr"]), began, unix_now());
      EXPECT_FALSE(marks.empty()) << a["expr"];
      for (const auto& series : marks) {
        for (const auto& point : series["values"]) {
          first_mark = std::min(first_mark, point[0].get<double>());
        }
      }
    }
  }
  EXPECT_GE(queries, 20);

  job.kill(SIGTERM);  // a preemption: the workers save and leave
  job.wait(std::chrono::seconds(60));
  // A preempted job keeps its snapshots in memory for a relaunch; this one will not be.
  tenax::CheckpointEngine::remove_memory("promtest-" + std::to_string(getpid()));
  const std::string out = job.output();

  // The recovery timeline: one line per surviving member, each phase after the last.
  std::istringstream lines(read_file(events));
  std::string line;
  int failures = 0;
  double detected = 1e300;
  while (std::getline(lines, line)) {
    const json ev = json::parse(line);
    if (ev["cause"] != "failure") continue;
    ++failures;
    EXPECT_FALSE(ev["host"].get<std::string>().empty());
    ASSERT_EQ(ev["phases"].size(), 4u) << line;
    double last = 0;
    for (const auto& p : ev["phases"]) {
      EXPECT_GE(p["start"].get<double>(), last) << line;
      EXPECT_GE(p["end"].get<double>(), p["start"].get<double>()) << line;
      last = p["end"];
    }
    EXPECT_GE(ev["detected_at"].get<double>(), began);
    detected = std::min(detected, ev["detected_at"].get<double>());
  }
  EXPECT_EQ(failures, 3) << read_file(events);
  EXPECT_GE(first_mark, detected - 2) << "the annotation marks a re-formation before the failure";

  // Structured logs: every line a worker wrote to stderr is one JSON object with its context.
  std::istringstream all(out);
  int json_lines = 0;
  std::set<int> ranks;
  while (std::getline(all, line)) {
    const size_t brace = line.find("] {");
    if (line.rfind("[rank ", 0) != 0 || brace == std::string::npos) continue;
    const json j = json::parse(line.substr(brace + 2));
    EXPECT_TRUE(j.contains("ts") && j.contains("level") && j.contains("msg")) << line;
    if (j.contains("generation")) {
      EXPECT_TRUE(j.contains("rank") && j.contains("host") && j.contains("member")) << line;
      ranks.insert(j["rank"].get<int>());
    }
    ++json_lines;
  }
  EXPECT_GT(json_lines, 10) << out;
  EXPECT_GE(ranks.size(), 3u) << out;
  std::filesystem::remove(events);
  std::filesystem::remove(path);
}

}  // namespace
