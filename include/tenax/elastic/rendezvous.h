#pragma once

// Elastic rendezvous over the Store: numbered generations of the worker set. A generation forms
// once at least min_workers have joined and is then closed: its member list is final. The first
// generation closes a last-call window after min_workers joined (or at max_workers); a later one
// closes once every member of the previous generation has joined or is gone (or at
// max_workers), so a joiner never forms a world of its own beside the one training. Members of the previous generation keep their relative order in the
// next one; joiners go last, in arrival order. Every member heartbeats; a member whose
// heartbeat stops for heartbeat_timeout is reported dead. A member is gone when its process
// died (the store sees its connection drop), when it left (destructor), or when another member
// marked it (mark_gone, after its heartbeat stopped). Generation numbers fence the past:
// whatever a member builds for generation N (communicator names, store prefixes) carries N, and
// superseded() tells an older member it must rejoin.
//
// Store keys, under rdzv/<run>/: "current" (the newest generation number), "g<N>/joined" (JSON
// list of member ids in arrival order), "g<N>/final" (the closed member list), "hb/<id>"
// (heartbeat counter), "gone/<id>" (present while the member is gone), "done" (the job ended).

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "tenax/core/export.h"
#include "tenax/store/store.h"

namespace tenax {

struct TENAX_API RendezvousOptions {
  std::string run = "tenax";
  int min_workers = 1;
  int max_workers = 1 << 20;
  std::chrono::milliseconds join_timeout{60000};      // min_workers not met by then: error
  std::chrono::milliseconds last_call{1000};          // once min is met, wait this for more
  std::chrono::milliseconds heartbeat_interval{500};
  std::chrono::milliseconds heartbeat_timeout{5000};  // silent this long: dead
  // This member's host (empty: its hostname). A generation's rank order keeps each host's
  // members together, in blocks of `group` (a tensor-parallel group never spans two hosts);
  // members beyond a host's last whole block come after every host's blocks.
  std::string host;
  int group = 1;
  // How many members this host starts together (its launcher's LOCAL_WORLD_SIZE; <= 0: taken
  // from the launch). Joiners of one host are admitted in one re-formation: the active members
  // go on training while the first of a host's joiners waits up to `admission_window` for the
  // rest of them (a second re-formation would pause every member; waiting pauses no one).
  int host_members = 0;
  std::chrono::milliseconds admission_window{2000};
};

struct TENAX_API Generation {
  int64_t number = 0;
  std::vector<std::string> members;  // the rank of a member is its index
  std::vector<std::string> hosts;    // hosts[i]: the host of members[i] ("" when unknown)
  int rank = -1;                     // this member's
  int size() const { return static_cast<int>(members.size()); }
};

// Thread rules: next() from one thread at a time (the runner's). dead_members() and
// admit_joiners() keep what they saw between calls: each from one thread at a time, which may
// be another (the runner's watchdog). superseded(), waiting(), mark_gone(), finish(),
// finished(), set_on_fenced() and interrupt() from any thread (the store client is
// thread-safe). Its heartbeat thread is its own: started by the constructor, joined by the
// destructor, which runs once no other thread uses it. The fencing handler runs on the
// heartbeat thread.
class TENAX_API Rendezvous {
 public:
  // `id` names this member (unique in the run, stable across its restarts if it should keep
  // its place). Starts heartbeating. Throws ConfigError for bad options.
  Rendezvous(std::shared_ptr<Store> store, std::string id, RendezvousOptions options = {});
  ~Rendezvous();
  Rendezvous(const Rendezvous&) = delete;
  Rendezvous& operator=(const Rendezvous&) = delete;

  // Joins the next generation that is still open (opening one when the newest is closed) and
  // returns it once closed with this member in it. `joined`, when given, runs once this
  // member's id is in the generation's list (e.g. to abort the old communicator, so members
  // still blocked in it come to the rendezvous too). Returns a generation without members
  // (rank -1) when the job ends (finish()) while it waits. While members of the previous
  // generation are alive and training without it, it waits for them (a warm spare waits so
  // until one is lost); otherwise throws TimeoutError saying how many joined when fewer than
  // min_workers join within join_timeout.
  Generation next(const std::function<void()>& joined = {});

  // Where a member's agent finds the key to set when the member's process dies: the store key
  // "agent/<member>" holds it (written when the member connects). tenaxrun sets that key as
  // soon as it reaps a worker that failed, so the others need not wait for the store to notice.
  static std::string agent_key(const std::string& member) { return "agent/" + member; }

  // True iff a generation newer than `gen` has been opened: its members must call next().
  bool superseded(const Generation& gen);

  // Members of `gen` (other than this one) whose heartbeat has not moved for
  // heartbeat_timeout, as seen by this member's successive calls, while this member's own
  // heartbeat moved (twice or more) in the store: a store that stalls for everyone (an etcd
  // leader election) stops no one's heartbeat in particular. Call it periodically.
  std::vector<std::string> dead_members(const Generation& gen);

  // Ids that joined the generation after `gen` so far (empty when none is open).
  std::vector<std::string> waiting(const Generation& gen);

  // True when the members of `gen` should re-form now to admit the joiners waiting for the next
  // generation: every host they come from has all its host_members there (joined, or in `gen`),
  // or the first of them has waited admission_window (as seen by this member's successive
  // calls). False when no joiner waits. Call it periodically, from one thread.
  bool admit_joiners(const Generation& gen);

  // Records that `id` is gone (its heartbeat stopped): generations close without waiting for
  // it. It comes back by joining again.
  void mark_gone(const std::string& id);

  // The end of the job: finish() marks it, finished() tells members (standby ones, late joiners).
  void finish();
  bool finished();

  const std::string& id() const { return id_; }

  // Called (on the heartbeat thread, once) when a heartbeat cannot reach the store within
  // heartbeat_timeout: the others count this member dead by then and re-form without it, so it
  // is fenced out and must stop training. `why` says what failed. Without a handler the
  // heartbeat stops with a warning.
  void set_on_fenced(std::function<void(const std::string& why)> handler);

  // Makes a call in progress on another thread (next(), a wait) fail at once with StoreError,
  // and every later call but the heartbeat's fail too: for a member that is leaving. Any thread.
  void interrupt() noexcept;

 private:
  std::string key(const std::string& suffix) const { return "rdzv/" + o_.run + "/" + suffix; }
  std::vector<std::string> joined(int64_t n);
  // The hosts recorded by the members `ids` (those that recorded one).
  std::map<std::string, std::string> hosts_of(const std::vector<std::string>& ids);
  // True iff every member of the previous generation is in `ids` or gone.
  bool previous_all_in(const std::vector<std::string>& previous,
                       const std::vector<std::string>& ids);
  // Writes generation n's final list: `previous`'s members first, in order, then joiners,
  // grouped by host (RendezvousOptions::host).
  void close(int64_t n, const std::vector<std::string>& arrivals,
             const std::vector<std::string>& previous);

  std::shared_ptr<Store> store_, beat_store_;
  std::string id_;
  RendezvousOptions o_;
  std::vector<std::string> last_members_;  // the previous generation this member was in
  struct Seen {
    int64_t count = -1;
    std::chrono::steady_clock::time_point since;
    int64_t own = 0;  // this member's own heartbeat count when `count` last moved
  };
  std::map<std::string, Seen> seen_;
  // admit_joiners(): the generation whose joiners it saw first, and when.
  int64_t joiners_of_ = -1;
  std::chrono::steady_clock::time_point joiners_since_;

  // The heartbeat thread: adds 1 to hb/<id> every heartbeat_interval on beat_store_ (whose
  // calls time out after heartbeat_timeout) until stopped or fenced. Protected by beat_mu_:
  // beat_stop_, on_fenced_.
  void beat_loop(const std::string& hb_key);
  std::mutex beat_mu_;
  std::condition_variable beat_cv_;
  bool beat_stop_ = false;
  std::function<void(const std::string&)> on_fenced_;
  std::thread beat_;
};

}  // namespace tenax
