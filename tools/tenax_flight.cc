// tenax-flight: merges the flight-recorder dumps of a job's ranks (TENAX_FLIGHT_DIR) and says
// which rank is behind on which operation.
//
//   tenax-flight DIR_OR_FILE...
//
// For each communicator (by name) whose ranks have an operation that did not complete, the
// first such operation (lowest sequence number) is the one the job is stuck in; a rank that
// never issued it, or left no record at all (hung, stopped or dead), is behind. Prints one
// line per rank of such a communicator and a verdict. Exit status: 0 when the records were read
// (whatever they show), 2 on bad usage or unreadable files.

#include <dirent.h>
#include <sys/stat.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <vector>

namespace {

using nlohmann::json;

struct Op {
  int64_t seq = 0;
  std::string op, dtype, state, error;
  int64_t count = 0, peer = -1, enqueued_us = 0, started_us = 0, ended_us = 0;
};

struct RankRecord {
  std::string who, host, reason;
  int64_t dumped_us = 0;
  std::vector<Op> ops;  // ascending seq
};

struct Communicator {
  int size = 0;
  std::map<int, RankRecord> ranks;
};

std::string describe(const Op& o) {
  std::string s = o.op + " #" + std::to_string(o.seq);
  if (!o.dtype.empty()) s += " (" + o.dtype + "[" + std::to_string(o.count) + "])";
  if (o.peer >= 0)
    s += (o.op == "send"   ? " to rank "
          : o.op == "recv" ? " from rank "
                           : " root ") +
         std::to_string(o.peer);
  return s;
}

std::vector<std::string> inputs(int argc, char** argv) {
  std::vector<std::string> files;
  for (int i = 1; i < argc; ++i) {
    struct stat st;
    if (::stat(argv[i], &st) != 0) {
      std::fprintf(stderr, "tenax-flight: %s: no such file or directory\n", argv[i]);
      std::exit(2);
    }
    if (!S_ISDIR(st.st_mode)) {
      files.push_back(argv[i]);
      continue;
    }
    DIR* d = opendir(argv[i]);
    while (dirent* e = d ? readdir(d) : nullptr) {
      const std::string n = e->d_name;
      if (n.rfind("flight-", 0) == 0 && n.size() > 5 && n.substr(n.size() - 5) == ".json") {
        files.push_back(std::string(argv[i]) + "/" + n);
      }
    }
    if (d) closedir(d);
  }
  std::sort(files.begin(), files.end());
  return files;
}

// Adds the dump at `path` to `comms` (by communicator name, then rank); false when it is not one.
bool load(const std::string& path, std::map<std::string, Communicator>* comms) {
  json doc;
  try {
    std::ifstream in(path);
    doc = json::parse(in);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "tenax-flight: %s: not a flight-recorder dump (%s)\n", path.c_str(),
                 e.what());
    return false;
  }
  std::printf("%s: %s on %s, pid %lld: %s\n", path.c_str(), doc.value("who", "?").c_str(),
              doc.value("host", "?").c_str(), (long long)doc.value("pid", 0),
              doc.value("reason", "").c_str());
  for (const auto& c : doc.value("communicators", json::array())) {
    Communicator& comm = (*comms)[c.value("name", "?")];
    comm.size = c.value("size", 0);
    RankRecord& r = comm.ranks[c.value("rank", -1)];
    r.who = doc.value("who", "?");
    r.host = doc.value("host", "?");
    r.reason = doc.value("reason", "");
    r.dumped_us = doc.value("time_us", int64_t{0});
    for (const auto& e : c.value("entries", json::array())) {
      Op o;
      o.seq = e.value("seq", int64_t{0});
      o.op = e.value("op", "?");
      o.dtype = e.value("dtype", "");
      o.state = e.value("state", "?");
      o.error = e.value("error", "");
      o.count = e.value("count", int64_t{0});
      o.peer = e.value("peer", int64_t{-1});
      o.enqueued_us = e.value("enqueued_us", int64_t{0});
      o.started_us = e.value("started_us", int64_t{0});
      o.ended_us = e.value("ended_us", int64_t{0});
      r.ops.push_back(o);
    }
    std::sort(r.ops.begin(), r.ops.end(), [](const Op& a, const Op& b) { return a.seq < b.seq; });
  }
  return true;
}

std::string joined(const std::vector<std::string>& items) {
  std::string s;
  for (const auto& x : items) s += (s.empty() ? "" : ", ") + x;
  return s;
}

// Prints where each rank of communicator `name` stands on the lowest-numbered operation not
// done everywhere; returns the verdict naming the ranks behind on it (empty: none is).
std::string examine(const std::string& name, const Communicator& comm) {
  const Op* stuck = nullptr;
  for (const auto& [rank, r] : comm.ranks) {
    for (const Op& o : r.ops) {
      if (o.state == "done") continue;
      if (!stuck || o.seq < stuck->seq) stuck = &o;
      break;
    }
  }
  if (!stuck) return "";
  std::printf("\ncommunicator '%s' (%d ranks): stuck in %s\n", name.c_str(), comm.size,
              describe(*stuck).c_str());
  std::vector<std::string> behind, waiting;
  for (int rank = 0; rank < comm.size; ++rank) {
    auto it = comm.ranks.find(rank);
    if (it == comm.ranks.end()) {
      std::printf("  rank %d: no record (hung, stopped or dead: it wrote no dump)\n", rank);
      behind.push_back(std::to_string(rank));
      continue;
    }
    const RankRecord& r = it->second;
    const Op* in = nullptr;
    const Op* last = r.ops.empty() ? nullptr : &r.ops.back();
    for (const Op& o : r.ops) {
      if (o.seq == stuck->seq) in = &o;
    }
    if (!in) {
      std::printf("  rank %d (%s on %s): behind: never issued #%lld; its last operation is %s\n",
                  rank, r.who.c_str(), r.host.c_str(), (long long)stuck->seq,
                  last ? (describe(*last) + ", " + last->state).c_str() : "none");
      behind.push_back(std::to_string(rank) + " (" + r.who + ")");
      continue;
    }
    const int64_t end = in->ended_us ? in->ended_us : r.dumped_us;
    const double waited = in->started_us ? double(end - in->started_us) / 1e6 : 0;
    std::printf("  rank %d (%s on %s): %s in %s for %.1f s%s\n", rank, r.who.c_str(),
                r.host.c_str(), in->state.c_str(), describe(*in).c_str(), waited,
                in->error.empty() ? "" : (" (" + in->error + ")").c_str());
    if (in->state != "done") waiting.push_back(std::to_string(rank));
  }
  if (behind.empty()) return "";
  const bool many = behind.size() > 1, several = waiting.size() > 1;
  return "communicator '" + name + "': " + (many ? "ranks " : "rank ") + joined(behind) +
         (many ? " are" : " is") + " behind on " + describe(*stuck) +
         (waiting.empty() ? ""
                          : (several ? "; ranks " : "; rank ") + joined(waiting) +
                                (several ? " wait in it" : " waits in it"));
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2 || std::string(argv[1]) == "--help") {
    std::fprintf(stderr, "usage: tenax-flight DIR_OR_FILE...  (the ranks' flight-*.json dumps)\n");
    return 2;
  }
  const std::vector<std::string> files = inputs(argc, argv);
  if (files.empty()) {
    std::fprintf(stderr, "tenax-flight: no flight-*.json files found\n");
    return 2;
  }
  std::map<std::string, Communicator> comms;
  for (const auto& path : files) {
    if (!load(path, &comms)) return 2;
  }
  std::set<std::string> verdicts;
  for (const auto& [name, comm] : comms) {
    const std::string v = examine(name, comm);
    if (!v.empty()) verdicts.insert(v);
  }
  std::printf("\n");
  if (verdicts.empty()) {
    std::printf("verdict: no rank is behind: every pending operation was issued by all ranks\n");
  }
  for (const auto& v : verdicts) std::printf("verdict: %s\n", v.c_str());
  return 0;
}
