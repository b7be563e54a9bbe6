#include "tenax/elastic/rendezvous.h"

#include <nlohmann/json.hpp>

#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <map>

#include "elastic/member_order.h"
#include "tenax/core/error.h"
#include "tenax/core/logging.h"

namespace tenax {
namespace {

using Clock = std::chrono::steady_clock;
using Ms = std::chrono::milliseconds;

constexpr Ms kPoll{20};

// A member list as stored under `key`. A record that is not a JSON list of strings (written by
// something other than a rendezvous) is a StoreError naming the key, never a JSON exception.
std::vector<std::string> parse_list(const std::string& key,
                                    const std::optional<std::string>& text) {
  if (!text || text->empty()) return {};
  try {
    return nlohmann::json::parse(*text).get<std::vector<std::string>>();
  } catch (const nlohmann::json::exception& e) {
    throw StoreError("rendezvous: the record under '" + key +
                     "' is not a list of member ids (" + e.what() + ")");
  }
}

// A closed generation's record (`g<N>/final`): {"members": [ids], "hosts": [their hosts]}.
Generation parse_final(const std::string& key, const std::optional<std::string>& text) {
  Generation gen;
  if (!text || text->empty()) return gen;
  try {
    const auto j = nlohmann::json::parse(*text);
    gen.members = j.at("members").get<std::vector<std::string>>();
    gen.hosts = j.at("hosts").get<std::vector<std::string>>();
  } catch (const nlohmann::json::exception& e) {
    throw StoreError("rendezvous: the record under '" + key +
                     "' is not a closed generation's members and hosts (" + e.what() + ")");
  }
  if (gen.hosts.size() != gen.members.size()) {
    throw StoreError("rendezvous: the record under '" + key + "' has " +
                     std::to_string(gen.members.size()) + " members and " +
                     std::to_string(gen.hosts.size()) + " hosts");
  }
  return gen;
}

std::string join_ids(const std::vector<std::string>& ids) {
  std::string s;
  for (const auto& id : ids) s += (s.empty() ? "" : ", ") + id;
  return s;
}

}  // namespace

Rendezvous::Rendezvous(std::shared_ptr<Store> store, std::string id, RendezvousOptions options)
    : store_(std::move(store)), id_(std::move(id)), o_(std::move(options)) {
  if (id_.empty()) throw ConfigError("rendezvous: the member id is empty");
  if (o_.min_workers < 1 || o_.max_workers < o_.min_workers) {
    throw ConfigError("rendezvous: need 1 <= min_workers (" + std::to_string(o_.min_workers) +
                      ") <= max_workers (" + std::to_string(o_.max_workers) + ")");
  }
  // A connection of our own: callers may use theirs from other threads.
  store_ = store_->clone();
  // Heartbeats on a connection of their own, so a long get() never delays them. When this
  // process dies the store sees that connection drop and marks the member gone.
  beat_store_ = store_->clone();
  beat_store_->set_timeout(o_.heartbeat_timeout);
  beat_store_->delete_key(key("gone/" + id_));
  beat_store_->set_on_disconnect(key("gone/" + id_), "1");
  // The key that says this member is gone, where its agent (which reaps it the moment it dies)
  // finds it: on a store that learns of deaths late (etcd), the agent sets it at once.
  store_->set(agent_key(id_), key("gone/" + id_));
  beat_store_->add(key("hb/" + id_), 1);
  if (o_.host.empty()) {
    char name[256] = {0};
    ::gethostname(name, sizeof(name) - 1);
    o_.host = name;
  }
  store_->set(key("host/" + id_), o_.host);
  store_->set(key("host_members/" + id_), std::to_string(std::max(1, o_.host_members)));
  beat_ = std::thread([this, hb = key("hb/" + id_)] { beat_loop(hb); });
}

void Rendezvous::beat_loop(const std::string& hb_key) {
  std::unique_lock<std::mutex> lock(beat_mu_);
  for (;;) {
    if (beat_cv_.wait_for(lock, o_.heartbeat_interval, [&] { return beat_stop_; })) return;
    lock.unlock();
    try {
      beat_store_->add(hb_key, 1);
    } catch (const std::exception& e) {
      lock.lock();
      // interrupt() from the destructor makes the add throw: that is a stop, not a failure.
      if (beat_stop_) return;
      const std::string why = "its heartbeat could not reach the store within " +
                              std::to_string(o_.heartbeat_timeout.count()) + " ms (" + e.what() +
                              ")";
      auto fenced = std::move(on_fenced_);
      lock.unlock();
      if (fenced) {
        fenced(why);
      } else {
        log(LogLevel::kWarning, "rendezvous: " + id_ + ": " + why + "; heartbeats stop");
      }
      return;
    }
    lock.lock();
  }
}

Rendezvous::~Rendezvous() {
  try {
    store_->set(key("gone/" + id_), "1");  // leaving: nobody should wait for us
  } catch (const std::exception&) {
  }
  {
    std::lock_guard<std::mutex> lock(beat_mu_);
    beat_stop_ = true;
  }
  beat_cv_.notify_all();
  beat_store_->interrupt();
  beat_.join();
}

void Rendezvous::set_on_fenced(std::function<void(const std::string& why)> handler) {
  std::lock_guard<std::mutex> lock(beat_mu_);
  on_fenced_ = std::move(handler);
}

std::vector<std::string> Rendezvous::joined(int64_t n) {
  const std::string k = key("g" + std::to_string(n) + "/joined");
  return parse_list(k, store_->try_get(k));
}

void Rendezvous::close(int64_t n, const std::vector<std::string>& arrivals,
                       const std::vector<std::string>& previous) {
  // Members of the previous generation first, in their old order; then joiners by arrival. The
  // first generation in natural id order.
  std::vector<std::string> order = arrivals;
  if (static_cast<int>(order.size()) > o_.max_workers) order.resize(o_.max_workers);
  auto place = [&](const std::string& id) {
    auto it = std::find(previous.begin(), previous.end(), id);
    return it == previous.end() ? previous.size() : static_cast<size_t>(it - previous.begin());
  };
  if (previous.empty()) {
    std::sort(order.begin(), order.end(), detail::natural_less);
  } else {
    std::stable_sort(order.begin(), order.end(), [&](const std::string& a, const std::string& b) {
      return place(a) < place(b);
    });
  }
  const auto host_of = hosts_of(order);
  order = detail::group_by_host(order, host_of, o_.group);
  std::vector<std::string> hosts;
  for (const auto& id : order) {
    auto it = host_of.find(id);
    hosts.push_back(it == host_of.end() ? "" : it->second);
  }
  const nlohmann::json record = {{"members", order}, {"hosts", hosts}};
  store_->compare_set(key("g" + std::to_string(n) + "/final"), "", record.dump());
}

std::map<std::string, std::string> Rendezvous::hosts_of(const std::vector<std::string>& ids) {
  std::map<std::string, std::string> hosts;
  for (const auto& id : ids) {
    if (auto h = store_->try_get(key("host/" + id))) hosts[id] = *h;
  }
  return hosts;
}

bool Rendezvous::previous_all_in(const std::vector<std::string>& previous,
                                 const std::vector<std::string>& ids) {
  if (previous.empty()) return false;
  std::vector<std::string> gone;
  for (const auto& k : store_->list(key("gone/"))) gone.push_back(k.substr(key("gone/").size()));
  for (const auto& m : previous) {
    if (std::find(ids.begin(), ids.end(), m) == ids.end() &&
        std::find(gone.begin(), gone.end(), m) == gone.end()) {
      return false;
    }
  }
  return true;
}

std::vector<std::string> Rendezvous::waiting(const Generation& gen) {
  return joined(gen.number + 1);
}

bool Rendezvous::admit_joiners(const Generation& gen) {
  std::vector<std::string> joiners;
  for (const auto& id : waiting(gen)) {
    if (std::find(gen.members.begin(), gen.members.end(), id) == gen.members.end()) {
      joiners.push_back(id);
    }
  }
  if (joiners.empty()) return false;
  const auto now = std::chrono::steady_clock::now();
  if (joiners_of_ != gen.number) {
    joiners_of_ = gen.number;
    joiners_since_ = now;
  }
  if (now - joiners_since_ >= o_.admission_window) return true;
  // Per host of a joiner: its members here (joined, or active in `gen`) against those it starts.
  const auto host_of = hosts_of(joiners);
  std::map<std::string, int> here, starts;
  for (const auto& id : joiners) {
    auto h = host_of.find(id);
    if (h == host_of.end()) return true;  // no host recorded: nothing to wait for
    ++here[h->second];
    int n = 1;
    if (auto v = store_->try_get(key("host_members/" + id))) n = std::max(1, std::atoi(v->c_str()));
    starts[h->second] = std::max(starts[h->second], n);
  }
  for (size_t i = 0; i < gen.members.size() && i < gen.hosts.size(); ++i) {
    auto it = here.find(gen.hosts[i]);
    if (it != here.end()) ++it->second;
  }
  for (const auto& [host, n] : starts) {
    if (here[host] < n) return false;
  }
  return true;
}

void Rendezvous::mark_gone(const std::string& id) { store_->set(key("gone/" + id), "1"); }

void Rendezvous::interrupt() noexcept { store_->interrupt(); }

void Rendezvous::finish() { store_->set(key("done"), "1"); }

bool Rendezvous::finished() { return store_->try_get(key("done")).has_value(); }

Generation Rendezvous::next(const std::function<void()>& on_joined) {
  store_->delete_key(key("gone/" + id_));  // back, if someone had given up on us
  bool announced = false;
  auto deadline = Clock::now() + o_.join_timeout;
  for (;;) {
    int64_t n = store_->add(key("current"), 0);
    if (n == 0) {
      store_->compare_set(key("current"), "0", "1");
      continue;
    }
    const std::string g = key("g" + std::to_string(n));
    if (store_->try_get(g + "/final")) {
      // Closed: open the next one (or find that someone just did).
      store_->compare_set(key("current"), std::to_string(n), std::to_string(n + 1));
      continue;
    }
    // Join generation n.
    for (;;) {
      const auto text = store_->try_get(g + "/joined");
      auto ids = parse_list(g + "/joined", text);
      if (std::find(ids.begin(), ids.end(), id_) != ids.end()) break;
      ids.push_back(id_);
      const std::string next = nlohmann::json(ids).dump();
      if (store_->compare_set(g + "/joined", text.value_or(""), next) == next) break;
    }
    if (on_joined && !announced) {
      announced = true;
      on_joined();
    }
    std::optional<Clock::time_point> min_met;
    // After the first generation, a generation closes only with every live member of the one
    // before (or at max_workers): a joiner alone must never form a second, split world while
    // the others train. Members whose heartbeat stopped are counted out here too.
    const std::string previous_key = key("g" + std::to_string(n - 1) + "/final");
    Generation previous = parse_final(previous_key, store_->try_get(previous_key));
    previous.number = n - 1;
    const bool first = previous.members.empty();
    auto next_liveness_check = Clock::now();
    for (;;) {
      if (auto final = store_->try_get(g + "/final")) {
        Generation gen = parse_final(g + "/final", final);
        gen.number = n;
        auto me = std::find(gen.members.begin(), gen.members.end(), id_);
        if (me == gen.members.end()) break;  // closed without us (full): try the next one
        gen.rank = static_cast<int>(me - gen.members.begin());
        last_members_ = gen.members;
        return gen;
      }
      const auto ids = joined(n);
      const int count = static_cast<int>(ids.size());
      const auto now = Clock::now();
      if (count >= o_.min_workers && !min_met) min_met = now;
      if (!first && now >= next_liveness_check) {
        next_liveness_check = now + o_.heartbeat_interval;
        for (const auto& id : dead_members(previous)) mark_gone(id);
        // Members of the previous generation still alive and not here are training on: a
        // joiner waits for them (as a spare when they have no need of it) for as long as they
        // live; the join timeout counts once none is left.
        if (!previous_all_in(previous.members, ids)) deadline = now + o_.join_timeout;
      }
      if (count >= o_.max_workers ||
          (min_met && (first ? now - *min_met >= o_.last_call : previous_all_in(previous.members, ids)))) {
        close(n, ids, previous.members);
        continue;
      }
      if (finished()) return Generation{};  // the job ended while we waited: nothing to join
      if (now > deadline) {
        throw TimeoutError("rendezvous '" + o_.run + "': generation " + std::to_string(n) +
                           " has " + std::to_string(count) + " of the " +
                           std::to_string(o_.min_workers) + " members it needs after " +
                           std::to_string(o_.join_timeout.count()) + " ms (joined: " +
                           join_ids(ids) + ")");
      }
      std::this_thread::sleep_for(kPoll);
    }
  }
}

bool Rendezvous::superseded(const Generation& gen) {
  return store_->add(key("current"), 0) > gen.number;
}

std::vector<std::string> Rendezvous::dead_members(const Generation& gen) {
  std::vector<std::string> dead;
  const auto now = Clock::now();
  const int64_t own = store_->add(key("hb/" + id_), 0);
  for (const auto& m : gen.members) {
    if (m == id_) continue;
    const int64_t count = store_->add(key("hb/" + m), 0);
    Seen& s = seen_[m];
    if (count != s.count) {
      s.count = count;
      s.since = now;
      s.own = own;
    } else if (now - s.since >= o_.heartbeat_timeout && own - s.own >= 2) {
      dead.push_back(m);
    }
  }
  return dead;
}

}  // namespace tenax
