#pragma once

// Process-wide settings. The environment is read in one place: settings() reads every TENAX_*
// (and AWS_*) variable the library honours once, on first use. Only the launch edge reads
// settings(): each layer's `from_environment` builders (LogOptions, FaultInjector, StoreLimits,
// EtcdOptions, CommOptions, FlightRecorderOptions, S3Options, ObserveOptions), defined in that
// layer's environment.cc, and the entry points that call them (connect(), init(), the
// ElasticRunner); every other part of a layer receives its values through its options
// (tests/source_rules_test.sh holds this). Launcher variables (RANK, OMPI_COMM_WORLD_*,
// SLURM_*) are read by the store layer's launch detection (tenax/store/launch.h).
// Thread rules: every function here may be called from any thread; settings() is initialized
// once (the first call that does not throw) and never changes after.

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>

#include "tenax/core/export.h"

namespace tenax {

// The S3 client's environment, as the AWS CLI reads it.
struct TENAX_API AwsEnvironment {
  std::string region;            // AWS_REGION, else AWS_DEFAULT_REGION
  std::string endpoint;          // AWS_ENDPOINT_URL_S3, else AWS_ENDPOINT_URL
  std::string access_key;        // AWS_ACCESS_KEY_ID
  std::string secret_key;        // AWS_SECRET_ACCESS_KEY
  std::string session_token;     // AWS_SESSION_TOKEN
  std::string credentials_file;  // AWS_SHARED_CREDENTIALS_FILE, else $HOME/.aws/credentials
  std::string profile;           // AWS_PROFILE, else "default"
};

// The etcd store's client environment (EtcdOptions::parse).
struct TENAX_API EtcdEnvironment {
  std::string user;       // TENAX_ETCD_USER
  std::string password;   // TENAX_ETCD_PASSWORD (never logged)
  std::string ca_file;    // TENAX_ETCD_CACERT
  std::string cert_file;  // TENAX_ETCD_CERT
  std::string key_file;   // TENAX_ETCD_KEY
  int64_t lease_ttl_s = 0;  // TENAX_ETCD_LEASE_TTL (seconds; 0 when unset: the default)
};

// The TCP store server's limits (StoreLimits); 0 where unset: the defaults.
struct TENAX_API StoreServerEnvironment {
  int64_t max_frame = 0;            // TENAX_STORE_MAX_FRAME (bytes)
  int64_t hello_timeout_ms = 0;     // TENAX_STORE_HELLO_TIMEOUT_MS
  int64_t max_unauthenticated = 0;  // TENAX_STORE_MAX_UNAUTHENTICATED
};

// Observability (tenax/observe/): metrics endpoint, events file, flight recorder, log format.
struct TENAX_API ObserveEnvironment {
  // TENAX_METRICS_PORT: each rank serves /metrics on this port + its local rank (-1 when
  // unset: no endpoint; 0: an ephemeral port, logged).
  int64_t metrics_port = -1;
  std::string metrics_address = "127.0.0.1";  // TENAX_METRICS_ADDR (the address to bind)
  std::string job;                            // TENAX_JOB: the `job` label ("" : "tenax")
  std::string events_file;     // TENAX_EVENTS_FILE: recovery events, one JSON line each
  std::string flight_dir;      // TENAX_FLIGHT_DIR: where flight-recorder dumps go ("": none)
  int64_t flight_entries = 0;  // TENAX_FLIGHT_ENTRIES: operations kept per communicator
  bool json_logs = false;      // TENAX_LOG_FORMAT=json (else text)
};

// The bound of every blocking call whose options leave it 0 (TENAX_TIMEOUT changes it where
// options are built from the environment).
inline constexpr std::chrono::milliseconds kDefaultTimeout{30000};

struct TENAX_API Settings {
  // TENAX_TIMEOUT (seconds, may be fractional), else 30 s: the default bound of every blocking
  // call.
  std::chrono::milliseconds timeout = kDefaultTimeout;
  // TENAX_DEBUG_COLLECTIVES: collectives check shapes and dtypes across ranks before running
  // (one extra small exchange per call).
  bool debug_collectives = false;
  // TENAX_SHM (default 1): all-reduce through shared memory when every rank is on one host.
  bool shared_memory = true;
  // TENAX_HOSTNAME: the address other ranks use to reach this one ("" when unset).
  std::string hostname;
  // TENAX_LOG_LEVEL: debug, info, warning or error ("" when unset: info).
  std::string log_level;
  // TENAX_FAULT: fault injection spec (core/fault_injection.h), "" when unset.
  std::string fault;
  // TENAX_RESTART_COUNT: how many times an agent has restarted this worker (0 when unset).
  int64_t restart_count = 0;
  // TENAX_PREFLIGHT: run the health checks before joining an elastic job (tenaxrun
  // --preflight sets it).
  bool preflight = false;
  // TENAX_ACTIVE_WORKERS: the most workers an elastic job trains on, the rest warm spares
  // (0 when unset: no limit). Set by tenaxrun --spares.
  int64_t active_workers = 0;
  AwsEnvironment aws;
  EtcdEnvironment etcd;
  StoreServerEnvironment store_server;
  ObserveEnvironment observe;
};

// The settings, read from the environment on the first call and returned unchanged after.
// Throws ConfigError naming the variable when one is malformed (TENAX_TIMEOUT not a positive
// number, TENAX_SHM, TENAX_RESTART_COUNT or TENAX_ACTIVE_WORKERS not an integer,
// TENAX_ETCD_LEASE_TTL or a TENAX_STORE_* limit not a positive integer,
// TENAX_METRICS_PORT not a port, TENAX_LOG_FORMAT neither text nor json); a later call tries
// again.
TENAX_API const Settings& settings();

// This machine's host name (gethostname), as logs, metrics labels and events name it.
TENAX_API std::string host_name();

// Returns the value of environment variable `name`, or nullopt when it is unset or empty. For
// programs' own flags and for the bootstrap; the library's settings come from settings().
TENAX_API std::optional<std::string> env_string(const char* name);

// Returns the integer value of `name`, or `fallback` when unset.
// Throws ConfigError naming the variable when it is set but not an integer.
TENAX_API long long env_int(const char* name, long long fallback);

// Returns true iff `name` is set to 1/true/yes/on (case-insensitive).
TENAX_API bool env_flag(const char* name);

// settings().timeout. Throws ConfigError when TENAX_TIMEOUT is not a positive number.
TENAX_API std::chrono::milliseconds default_timeout();

}  // namespace tenax
