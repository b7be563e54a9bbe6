#include <dirent.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <set>
#include <sstream>

#include "tenax/comm/init.h"
#include "tenax/core/config.h"
#include "tenax/core/error.h"
#include "tenax/core/logging.h"
#include "tenax/core/metrics.h"
#include "tenax/core/time_use.h"
#include "tenax/observe/observe.h"

namespace tenax::observe {
namespace {

struct ProcessSeries {
  metrics::Counter* cpu;
  metrics::Gauge* resident;
  metrics::Gauge* threads;
  metrics::Gauge* open_fds;
  metrics::Gauge* shm;
  metrics::Gauge* uptime;
  metrics::Gauge* goodput;
};

ProcessSeries& process_series() {
  static ProcessSeries* p = [] {
    auto& r = metrics::registry();
    auto* s = new ProcessSeries();
    s->cpu = &r.counter("process_cpu_seconds_total", "User and system CPU time of the process");
    s->resident = &r.gauge("process_resident_memory_bytes", "Resident memory of the process");
    s->threads = &r.gauge("tenax_process_threads", "Threads of the process");
    s->open_fds = &r.gauge("process_open_fds", "Open file descriptors of the process");
    s->shm = &r.gauge("tenax_process_shm_bytes",
                      "Bytes of /dev/shm files the process maps (memory-tier snapshots, "
                      "shared-memory collectives)");
    s->uptime = &r.gauge("tenax_process_uptime_seconds", "Seconds since the process started");
    s->goodput =
        &r.gauge("tenax_goodput_ratio", "Productive step time over the process's wall time so far");
    return s;
  }();
  return *p;
}

int count_entries(const char* dir) {
  int n = 0;
  if (DIR* d = opendir(dir)) {
    while (dirent* e = readdir(d)) {
      if (e->d_name[0] != '.') ++n;
    }
    closedir(d);
  }
  return n;
}

double shm_bytes_mapped() {
  std::ifstream maps("/proc/self/maps");
  std::set<std::string> files;
  std::string line;
  while (std::getline(maps, line)) {
    const size_t at = line.find("/dev/shm/");
    if (at != std::string::npos) files.insert(line.substr(at));
  }
  double total = 0;
  for (const auto& f : files) {
    struct stat st;
    if (::stat(f.c_str(), &st) == 0) total += static_cast<double>(st.st_size);
  }
  return total;
}

void collect_process() {
  ProcessSeries& s = process_series();
  static const long ticks = sysconf(_SC_CLK_TCK);
  static const long page = sysconf(_SC_PAGESIZE);
  std::ifstream stat("/proc/self/stat");
  std::string text((std::istreambuf_iterator<char>(stat)), std::istreambuf_iterator<char>());
  const size_t close = text.rfind(')');
  if (close != std::string::npos) {
    std::istringstream in(text.substr(close + 2));
    std::vector<std::string> f;
    std::string x;
    while (in >> x) f.push_back(x);
    // Fields from 3 (state) on: utime is field 14, stime 15, num_threads 20, rss 24.
    if (f.size() > 21) {
      const double cpu = (std::stod(f[11]) + std::stod(f[12])) / static_cast<double>(ticks);
      s.cpu->inc(cpu - s.cpu->value());
      s.threads->set(std::stod(f[17]));
      s.resident->set(std::stod(f[21]) * static_cast<double>(page));
    }
  }
  s.open_fds->set(count_entries("/proc/self/fd") - 1);  // less the directory being read
  s.shm->set(shm_bytes_mapped());
  const double up = process_seconds();
  s.uptime->set(up);
  s.goodput->set(up > 0 ? accounted_time(TimeUse::kProductive) / up : 0);
}

struct TrainSeries {
  metrics::Gauge *step, *loss, *lr, *grad_norm, *tps, *mfu;
  metrics::Counter* tokens;
  metrics::Histogram* step_seconds;
  metrics::Counter *compute, *communication, *checkpoint;
};

TrainSeries& train_series() {
  static TrainSeries* t = [] {
    auto& r = metrics::registry();
    auto* s = new TrainSeries();
    s->step = &r.gauge("tenax_train_step", "Training steps completed");
    s->loss = &r.gauge("tenax_train_loss", "Training loss of the last step");
    s->lr = &r.gauge("tenax_train_learning_rate", "Learning rate of the last step");
    s->grad_norm = &r.gauge("tenax_train_grad_norm", "Gradient norm of the last step");
    s->tps = &r.gauge("tenax_train_tokens_per_second", "Tokens per second of the last step (job)");
    s->mfu = &r.gauge("tenax_train_mfu_ratio", "Model FLOPs utilisation of the last step");
    s->tokens = &r.counter("tenax_train_tokens_total", "Tokens trained on (the job's, per step)");
    s->step_seconds = &r.family("tenax_train_step_seconds", "Wall time of a training step",
                                metrics::Type::kHistogram)
                           .histogram();
    auto& part = r.family("tenax_train_step_part_seconds_total",
                          "Step time split: compute, communication (blocked waiting) and "
                          "checkpoint stall",
                          metrics::Type::kCounter, {"part"});
    s->compute = &part.counter({"compute"});
    s->communication = &part.counter({"communication"});
    s->checkpoint = &part.counter({"checkpoint_stall"});
    return s;
  }();
  return *t;
}

}  // namespace

Observability::Observability(ObserveOptions o) {
  const std::string job = !o.job.empty() ? o.job : "tenax";
  const std::string address = !o.address.empty() ? o.address : "127.0.0.1";
  if (o.port >= 0) {
    server_ = std::make_unique<MetricsServer>(address, o.port, nullptr, o.port_source);
  }
  auto& r = metrics::registry();
  r.set_constant_label("job", job);
  r.set_constant_label("host", host_name());
  set_log_context("host", host_name());
  process_series();
  train_series();
  accounted_time(TimeUse::kProductive);  // the goodput series exist from the start
  collector_ = r.add_collector(collect_process);
  if (server_) {
    log(LogLevel::kInfo,
        "metrics: serving http://" + address + ":" + std::to_string(server_->port()) + "/metrics");
  }
}

Observability::~Observability() {
  metrics::registry().remove_collector(collector_);
  server_.reset();
}

int Observability::port() const { return server_ ? server_->port() : -1; }

void record_step(const StepSample& s) {
  TrainSeries& t = train_series();
  t.step->set(static_cast<double>(s.step));
  t.loss->set(s.loss);
  t.lr->set(s.learning_rate);
  t.grad_norm->set(s.grad_norm);
  t.tokens->inc(static_cast<double>(s.tokens));
  if (s.seconds > 0) {
    const double tps = static_cast<double>(s.tokens) / s.seconds;
    t.tps->set(tps);
    if (s.peak_flops > 0) t.mfu->set(tps * s.flops_per_token / s.peak_flops);
  }
  t.step_seconds->observe(s.seconds);
  t.compute->inc(s.seconds - s.comm_seconds - s.ckpt_seconds);
  t.communication->inc(s.comm_seconds);
  t.checkpoint->inc(s.ckpt_seconds);
}

void set_label(const std::string& name, const std::string& value) {
  metrics::registry().set_constant_label(name, value);
}

}  // namespace tenax::observe
