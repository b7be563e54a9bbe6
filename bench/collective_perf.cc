// tenax-collective-perf: collective bandwidth in nccl-tests' flags and table.
//
//   mpirun -np 4 tenax-collective-perf -b 1M -e 64M -f 2 --coll all_reduce
//   tenaxrun --nproc-per-node 4 tenax-collective-perf -b 8 -e 128M -f 2 -c 1
//
// Flags (nccl-tests'): -b min bytes, -e max bytes (K/M/G suffixes), -f step factor, -i step
// bytes (when -f is 1), -n iterations, -w warmup iterations, -c check (1/0), -d dtype
// (float|double|half|bfloat16|int32|int64|uint8), -o op (sum|avg|min|max|prod), -r root;
// plus --coll, --backend gloo|nccl, --json FILE.
//
// Columns: size is the largest buffer in bytes (all_gather's output, reduce_scatter's input),
// count its elements; time is the mean per iteration, averaged over ranks; algbw = size/time;
// busbw = algbw x the collective's factor (nccl-tests'); #wrong counts wrong elements across
// ranks after one checked run (N/A without -c).

#include <ATen/ATen.h>
#include <getopt.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include "tenax/tenax.h"

using namespace tenax;

namespace {

enum class Coll { kAllReduce, kReduceScatter, kAllGather, kBroadcast, kReduce, kAllToAll, kSendRecv };

struct Options {
  size_t min_bytes = 32 * 1024 * 1024, max_bytes = 32 * 1024 * 1024, step_bytes = 1024 * 1024;
  double factor = 1;
  int iters = 20, warmup = 5, check = 1, root = 0;
  at::ScalarType dtype = at::kFloat;
  ReduceOp op = ReduceOp::kSum;
  Coll coll = Coll::kAllReduce;
  Backend backend = Backend::kGloo;
  std::string json;
};

size_t parse_size(const std::string& flag, const char* v) {
  char* end = nullptr;
  double x = std::strtod(v, &end);
  double mult = 1;
  if (*end == 'K' || *end == 'k') mult = 1024.0, ++end;
  else if (*end == 'M' || *end == 'm') mult = 1024.0 * 1024, ++end;
  else if (*end == 'G' || *end == 'g') mult = 1024.0 * 1024 * 1024, ++end;
  if (end == v || *end != '\0' || x < 0) throw ConfigError(flag + " '" + v + "' is not a size");
  return static_cast<size_t>(x * mult);
}

int parse_int(const std::string& flag, const char* v) {
  char* end = nullptr;
  long x = std::strtol(v, &end, 10);
  if (end == v || *end != '\0') throw ConfigError(flag + " '" + v + "' is not an integer");
  return static_cast<int>(x);
}

const std::vector<std::pair<std::string, at::ScalarType>>& dtypes() {
  static const std::vector<std::pair<std::string, at::ScalarType>> d = {
      {"float", at::kFloat}, {"double", at::kDouble}, {"half", at::kHalf},
      {"bfloat16", at::kBFloat16}, {"int32", at::kInt}, {"int64", at::kLong},
      {"uint8", at::kByte}};
  return d;
}

std::string dtype_name(at::ScalarType t) {
  for (auto& [n, d] : dtypes()) {
    if (d == t) return n;
  }
  return "?";
}

const std::vector<std::pair<std::string, Coll>>& colls() {
  static const std::vector<std::pair<std::string, Coll>> c = {
      {"all_reduce", Coll::kAllReduce}, {"reduce_scatter", Coll::kReduceScatter},
      {"all_gather", Coll::kAllGather}, {"broadcast", Coll::kBroadcast},
      {"reduce", Coll::kReduce},        {"all_to_all", Coll::kAllToAll},
      {"sendrecv", Coll::kSendRecv}};
  return c;
}

std::string coll_name(Coll c) {
  for (auto& [n, x] : colls()) {
    if (x == c) return n;
  }
  return "?";
}

Options parse(int argc, char** argv) {
  Options o;
  static option longopts[] = {{"minbytes", required_argument, nullptr, 'b'},
                              {"maxbytes", required_argument, nullptr, 'e'},
                              {"stepfactor", required_argument, nullptr, 'f'},
                              {"stepbytes", required_argument, nullptr, 'i'},
                              {"iters", required_argument, nullptr, 'n'},
                              {"warmup_iters", required_argument, nullptr, 'w'},
                              {"check", required_argument, nullptr, 'c'},
                              {"datatype", required_argument, nullptr, 'd'},
                              {"op", required_argument, nullptr, 'o'},
                              {"root", required_argument, nullptr, 'r'},
                              {"coll", required_argument, nullptr, 'C'},
                              {"backend", required_argument, nullptr, 'B'},
                              {"json", required_argument, nullptr, 'J'},
                              {"help", no_argument, nullptr, 'h'},
                              {nullptr, 0, nullptr, 0}};
  bool factor_set = false;
  int c;
  while ((c = getopt_long(argc, argv, "b:e:f:i:n:w:c:d:o:r:h", longopts, nullptr)) != -1) {
    switch (c) {
      case 'b': o.min_bytes = parse_size("-b", optarg); break;
      case 'e': o.max_bytes = parse_size("-e", optarg); break;
      case 'f': o.factor = std::strtod(optarg, nullptr); factor_set = true; break;
      case 'i': o.step_bytes = parse_size("-i", optarg); break;
      case 'n': o.iters = parse_int("-n", optarg); break;
      case 'w': o.warmup = parse_int("-w", optarg); break;
      case 'c': o.check = parse_int("-c", optarg); break;
      case 'r': o.root = parse_int("-r", optarg); break;
      case 'o': o.op = parse_reduce_op(optarg); break;
      case 'B': o.backend = parse_backend(optarg); break;
      case 'J': o.json = optarg; break;
      case 'd': {
        bool found = false;
        for (auto& [n, d] : dtypes()) {
          if (n == optarg || (std::string(optarg) == "float32" && d == at::kFloat)) {
            o.dtype = d;
            found = true;
          }
        }
        if (!found) throw ConfigError(std::string("-d '") + optarg + "' is not a known dtype");
        break;
      }
      case 'C': {
        bool found = false;
        for (auto& [n, x] : colls()) {
          if (n == optarg) o.coll = x, found = true;
        }
        if (!found) throw ConfigError(std::string("--coll '") + optarg + "' is not a collective");
        break;
      }
      default:
        std::printf(
            "usage: %s [-b min] [-e max] [-f factor] [-i stepbytes] [-n iters] [-w warmup] "
            "[-c 0|1] [-d dtype] [-o op] [-r root] [--coll NAME] [--backend gloo|nccl] "
            "[--json FILE]\n",
            argv[0]);
        std::exit(c == 'h' ? 0 : 2);
    }
  }
  if (!factor_set) o.factor = 1;
  if (o.min_bytes > o.max_bytes) throw ConfigError("-b must not exceed -e");
  if (o.iters < 1 || o.warmup < 0) throw ConfigError("-n must be >= 1 and -w >= 0");
  if (o.factor < 1 || (o.factor == 1 && o.step_bytes == 0)) {
    throw ConfigError("-f must be > 1, or -f 1 with -i > 0");
  }
  return o;
}

double bus_factor(Coll c, int n) {
  switch (c) {
    case Coll::kAllReduce: return 2.0 * (n - 1) / n;
    case Coll::kReduceScatter:
    case Coll::kAllGather:
    case Coll::kAllToAll: return double(n - 1) / n;
    default: return 1.0;
  }
}

// Deterministic per-rank input: small integers, exact in every dtype, so checks are exact.
at::Tensor rank_input(int rank, int64_t count, at::ScalarType dt, ReduceOp op) {
  at::Tensor i = at::arange(count, at::kLong);
  at::Tensor v = op == ReduceOp::kProduct ? ((i + rank) % 2) * 2 - 1 : (i * 3 + rank) % 5 - 2;
  if (dt == at::kByte) v = op == ReduceOp::kProduct ? at::ones_like(i) : (i * 3 + rank) % 5;
  return v.to(dt);
}

at::Tensor reduce_expected(int n, int64_t count, at::ScalarType dt, ReduceOp op) {
  std::vector<at::Tensor> all;
  for (int k = 0; k < n; ++k) all.push_back(rank_input(k, count, dt, op).to(at::kDouble));
  at::Tensor s = at::stack(all);
  at::Tensor r;
  switch (op) {
    case ReduceOp::kSum:
    case ReduceOp::kAvg: r = s.sum(0); break;
    case ReduceOp::kProduct: r = s.prod(0); break;
    case ReduceOp::kMin: r = std::get<0>(s.min(0)); break;
    case ReduceOp::kMax: r = std::get<0>(s.max(0)); break;
  }
  r = r.to(dt);
  if (op == ReduceOp::kAvg) {
    if (at::isFloatingType(dt)) r.div_(n);
    else r.div_(n, "trunc");
  }
  return r;
}

int64_t count_wrong(const at::Tensor& got, const at::Tensor& want) {
  at::Tensor g = got.to(at::kDouble).reshape({-1}), w = want.to(at::kDouble).reshape({-1});
  return (g - w).abs().gt(1e-2 * (w.abs() + 1)).sum().item<int64_t>();
}

struct Result {
  double time_us = 0, algbw = 0, busbw = 0;
  int64_t wrong = -1;  // -1: not checked / not applicable
};

class Runner {
 public:
  Runner(Communicator& c, const Options& o) : c_(c), o_(o), n_(c.size()), r_(c.rank()) {
    opts_ = at::TensorOptions().dtype(o.dtype);
    if (o.backend == Backend::kNccl) opts_ = opts_.device(at::kCUDA, 0);
  }

  // Element count of the largest buffer for `bytes`, rounded so every rank gets whole chunks.
  int64_t count_for(size_t bytes) const {
    int64_t count = static_cast<int64_t>(bytes / at::elementSize(o_.dtype));
    if (o_.coll == Coll::kReduceScatter || o_.coll == Coll::kAllGather ||
        o_.coll == Coll::kAllToAll) {
      count -= count % n_;
    }
    return count;
  }

  Result run(int64_t count, bool in_place) {
    setup(count, in_place);
    for (int i = 0; i < o_.warmup; ++i) once(in_place);
    c_.barrier();
    auto t0 = std::chrono::steady_clock::now();
    std::vector<WorkHandle> works;
    for (int i = 0; i < o_.iters; ++i) works.push_back(launch(in_place));
    // Like nccl-tests' one stream synchronisation: collectives complete in issue order, so the
    // timing thread sleeps once, on the last, instead of waking for every operation.
    works.back()->wait();
    for (auto& w : works) w->wait();
    wait_sends();
    if (o_.backend == Backend::kNccl) c_.barrier();
    double sec = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    at::Tensor t = at::tensor({sec / o_.iters}, at::kDouble);
    c_.all_reduce(t, ReduceOp::kAvg);
    Result res;
    res.time_us = t.item<double>() * 1e6;
    const double bytes = double(count) * at::elementSize(o_.dtype);
    res.algbw = res.time_us > 0 ? bytes / (res.time_us * 1e-6) / 1e9 : 0;
    res.busbw = res.algbw * bus_factor(o_.coll, n_);
    if (o_.check) res.wrong = check(count, in_place);
    return res;
  }

 private:
  void setup(int64_t count, bool in_place) {
    const int64_t chunk = count / n_;
    switch (o_.coll) {
      case Coll::kAllReduce:
      case Coll::kBroadcast:
      case Coll::kReduce:
      case Coll::kSendRecv:
        in_ = rank_input(r_, count, o_.dtype, o_.op).to(opts_.device());
        out_ = at::empty({count}, opts_);
        break;
      case Coll::kReduceScatter:
        in_ = rank_input(r_, count, o_.dtype, o_.op).to(opts_.device());
        out_ = in_place ? in_.narrow(0, r_ * chunk, chunk) : at::empty({chunk}, opts_);
        break;
      case Coll::kAllGather:
        out_ = at::empty({count}, opts_);
        in_ = in_place ? out_.narrow(0, r_ * chunk, chunk)
                       : rank_input(r_, chunk, o_.dtype, o_.op).to(opts_.device());
        if (in_place) in_.copy_(rank_input(r_, chunk, o_.dtype, o_.op));
        break;
      case Coll::kAllToAll:
        in_ = rank_input(r_, count, o_.dtype, o_.op).to(opts_.device());
        out_ = at::empty({count}, opts_);
        break;
    }
  }

  WorkHandle launch(bool in_place) {
    switch (o_.coll) {
      case Coll::kAllReduce:
        return in_place ? c_.all_reduce_async(in_, o_.op) : c_.all_reduce_async(in_, out_, o_.op);
      case Coll::kReduceScatter:
        return c_.reduce_scatter_async(out_, in_, o_.op);
      case Coll::kAllGather: return c_.all_gather_async(out_, in_);
      case Coll::kBroadcast: return c_.broadcast_async(in_place ? in_ : out_, o_.root);
      case Coll::kReduce: return c_.reduce_async(in_place ? in_ : out_, o_.root, o_.op);
      case Coll::kAllToAll: return c_.all_to_all_async(out_, in_);
      case Coll::kSendRecv: {
        if (n_ == 1) return c_.barrier_async();
        auto s = c_.send_async(in_, (r_ + 1) % n_);
        auto rv = c_.recv_async(out_, (r_ - 1 + n_) % n_);
        pending_sends_.push_back(s);
        return rv;
      }
    }
    return nullptr;
  }

  void once(bool in_place) {
    launch(in_place)->wait();
    wait_sends();
  }

  // A send's buffer must stay alive until it completes.
  void wait_sends() {
    for (auto& s : pending_sends_) s->wait();
    pending_sends_.clear();
  }

  int64_t check(int64_t count, bool in_place) {
    setup(count, in_place);
    if (o_.coll == Coll::kBroadcast || o_.coll == Coll::kReduce) {
      if (!in_place) out_.copy_(in_);
    }
    once(in_place);
    const int64_t chunk = count / n_;
    at::Tensor got = (o_.coll == Coll::kAllReduce && in_place) ||
                             ((o_.coll == Coll::kBroadcast || o_.coll == Coll::kReduce) && in_place)
                         ? in_
                         : out_;
    at::Tensor want;
    switch (o_.coll) {
      case Coll::kAllReduce: want = reduce_expected(n_, count, o_.dtype, o_.op); break;
      case Coll::kReduceScatter:
        want = reduce_expected(n_, count, o_.dtype, o_.op).narrow(0, r_ * chunk, chunk);
        break;
      case Coll::kAllGather: {
        std::vector<at::Tensor> parts;
        for (int k = 0; k < n_; ++k) parts.push_back(rank_input(k, chunk, o_.dtype, o_.op));
        want = at::cat(parts);
        break;
      }
      case Coll::kBroadcast: want = rank_input(o_.root, count, o_.dtype, o_.op); break;
      case Coll::kReduce:
        want = r_ == o_.root ? reduce_expected(n_, count, o_.dtype, o_.op)
                             : rank_input(r_, count, o_.dtype, o_.op);
        break;
      case Coll::kAllToAll: {
        std::vector<at::Tensor> parts;
        for (int k = 0; k < n_; ++k) {
          parts.push_back(rank_input(k, count, o_.dtype, o_.op).narrow(0, r_ * chunk, chunk));
        }
        want = at::cat(parts);
        break;
      }
      case Coll::kSendRecv:
        want = rank_input(n_ == 1 ? r_ : (r_ - 1 + n_) % n_, count, o_.dtype, o_.op);
        if (n_ == 1) got = in_;
        break;
    }
    at::Tensor wrong = at::tensor({count_wrong(got.cpu(), want)}, at::kLong).to(opts_.device());
    c_.all_reduce(wrong);
    return wrong.cpu().item<int64_t>();
  }

  Communicator& c_;
  const Options& o_;
  int n_, r_;
  at::TensorOptions opts_;
  at::Tensor in_, out_;
  std::vector<WorkHandle> pending_sends_;
};

std::string wrong_str(int64_t w) { return w < 0 ? "N/A" : std::to_string(w); }

}  // namespace

int main(int argc, char** argv) {
  Options o;
  try {
    o = parse(argc, argv);
  } catch (const Error& e) {
    std::fprintf(stderr, "tenax-collective-perf: %s\n", e.what());
    return 2;
  }
  try {
    InitOptions io;
    io.backend = o.backend;
    World w = init(io);
    Communicator& c = *w.comm;
    const bool root_op = o.coll == Coll::kBroadcast || o.coll == Coll::kReduce;
    if (root_op && (o.root < 0 || o.root >= c.size())) {
      throw ConfigError("-r " + std::to_string(o.root) + " is out of range for " +
                        std::to_string(c.size()) + " ranks");
    }
    const bool reduces = o.coll == Coll::kAllReduce || o.coll == Coll::kReduceScatter ||
                         o.coll == Coll::kReduce;
    const bool lead = c.rank() == 0;
    char host[256] = {0};
    gethostname(host, sizeof(host) - 1);
    if (lead) {
      std::printf("# tenax-collective-perf %s  backend: %s  nranks: %d  minBytes %zu maxBytes %zu "
                  "step: %g(factor) %zu(bytes) warmup iters: %d iters: %d validation: %d\n",
                  coll_name(o.coll).c_str(), to_string(o.backend).c_str(), c.size(), o.min_bytes,
                  o.max_bytes, o.factor, o.step_bytes, o.warmup, o.iters, o.check);
      std::printf("#\n# Using devices\n");
    }
    // One line per rank, in rank order.
    for (int k = 0; k < c.size(); ++k) {
      if (k == c.rank()) {
        std::printf("#  Rank %2d Pid %6d on %10s device %s\n", k, getpid(), host,
                    o.backend == Backend::kNccl ? "cuda" : "cpu");
        std::fflush(stdout);
      }
      c.barrier();
    }
    if (lead) {
      std::printf("#\n#%74s%35s\n", "out-of-place", "in-place");
      std::printf("#%11s %13s %9s %7s %7s %8s %7s %7s %6s %8s %7s %7s %6s\n", "size", "count",
                  "type", "redop", "root", "time", "algbw", "busbw", "#wrong", "time", "algbw",
                  "busbw", "#wrong");
      std::printf("#%11s %13s %9s %7s %7s %8s %7s %7s %6s %8s %7s %7s %6s\n", "(B)",
                  "(elements)", "", "", "", "(us)", "(GB/s)", "(GB/s)", "", "(us)", "(GB/s)",
                  "(GB/s)", "");
    }
    Runner runner(c, o);
    double busbw_sum = 0;
    int lines = 0;
    int64_t wrong_total = 0;
    std::string json_rows;
    for (size_t bytes = o.min_bytes; bytes <= o.max_bytes;
         bytes = o.factor > 1 ? static_cast<size_t>(std::max<double>(bytes + 1, bytes * o.factor))
                              : bytes + o.step_bytes) {
      int64_t count = runner.count_for(bytes);
      if (count == 0 && bytes > 0) continue;
      Result oop = runner.run(count, false);
      Result ip = runner.run(count, true);
      const size_t size = count * at::elementSize(o.dtype);
      wrong_total += std::max<int64_t>(0, oop.wrong) + std::max<int64_t>(0, ip.wrong);
      busbw_sum += (oop.busbw + ip.busbw) / 2;
      ++lines;
      if (lead) {
        std::printf(" %11zu %13ld %9s %7s %7d %8.1f %7.3f %7.3f %6s %8.1f %7.3f %7.3f %6s\n", size,
                    static_cast<long>(count), dtype_name(o.dtype).c_str(),
                    reduces ? to_string(o.op).c_str() : "none", root_op ? o.root : -1,
                    oop.time_us, oop.algbw, oop.busbw, wrong_str(oop.wrong).c_str(), ip.time_us,
                    ip.algbw, ip.busbw, wrong_str(ip.wrong).c_str());
        std::fflush(stdout);
        char row[512];
        std::snprintf(row, sizeof(row),
                      "%s{\"size\":%zu,\"count\":%ld,\"type\":\"%s\",\"redop\":\"%s\",\"root\":%d,"
                      "\"out_of_place\":{\"time_us\":%.3f,\"algbw\":%.6f,\"busbw\":%.6f,\"wrong\":%ld},"
                      "\"in_place\":{\"time_us\":%.3f,\"algbw\":%.6f,\"busbw\":%.6f,\"wrong\":%ld}}",
                      json_rows.empty() ? "" : ",", size, static_cast<long>(count),
                      dtype_name(o.dtype).c_str(), reduces ? to_string(o.op).c_str() : "none",
                      root_op ? o.root : -1, oop.time_us, oop.algbw, oop.busbw,
                      static_cast<long>(oop.wrong), ip.time_us, ip.algbw, ip.busbw,
                      static_cast<long>(ip.wrong));
        json_rows += row;
      }
    }
    const double avg = lines ? busbw_sum / lines : 0;
    if (lead) {
      std::printf("# Out of bounds values : %ld %s\n", static_cast<long>(wrong_total),
                  wrong_total == 0 ? "OK" : "FAILED");
      std::printf("# Avg bus bandwidth    : %g \n#\n", avg);
      if (!o.json.empty()) {
        std::ofstream f(o.json);
        f << "{\"coll\":\"" << coll_name(o.coll) << "\",\"backend\":\"" << to_string(o.backend)
          << "\",\"nranks\":" << c.size() << ",\"results\":[" << json_rows
          << "],\"avg_busbw\":" << avg << ",\"wrong\":" << wrong_total << "}\n";
      }
    }
    c.barrier();
    return wrong_total == 0 ? 0 : 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "tenax-collective-perf: %s\n", e.what());
    return 1;
  }
}
