#pragma once

// Bootstrap: find out who we are from the launcher's environment, reach the store, and build
// the world communicator. Supported launchers, tried in this order:
//   tenaxrun / torchrun  RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT
//                        (TENAX_STORE_ADDR=host:port when the launcher hosts the store); rank 0
//                        starts the store as a process of its own, as under mpirun
//   mpirun (Open MPI)    OMPI_COMM_WORLD_RANK/SIZE/LOCAL_RANK/LOCAL_SIZE; rank 0 starts the
//                        store as a process of its own (it outlives rank 0 and leaves 5 s
//                        after its last client), its address is exchanged through MPI once,
//                        then MPI is finalized
//   Slurm (srun)         SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID; MASTER_ADDR/MASTER_PORT, or
//                        the first host of SLURM_STEP_NODELIST and a port derived from the job id
//                        (the store: a process of its own started by rank 0)
// Under every launcher TENAX_STORE_ADDR=etcd://h1:2379,h2:2379[/prefix] puts the store on an
// etcd cluster instead (EtcdOptions::parse): no process whose loss ends the job.
//   nothing              a single process: world size 1
// The store requires TENAX_STORE_TOKEN when set (launchers generate one).

#include <memory>
#include <string>

#include "tenax/comm/communicator.h"
#include "tenax/core/export.h"
#include "tenax/store/launch.h"
#include "tenax/store/store.h"
#include "tenax/store/store_server.h"

namespace tenax {

struct TENAX_API InitOptions {
  Backend backend = Backend::kGloo;
  // Bound on every blocking call (0: TENAX_TIMEOUT, else 30 s).
  std::chrono::milliseconds timeout{0};
};

// What init() returns: identity, the store, and the world communicator. Keep it alive for the
// duration of the job: in a single process `store_server` serves the store in-process; it is
// null wherever the store lives elsewhere (tenaxrun, TENAX_STORE_ADDR, etcd, or the store
// process rank 0 starts under mpirun, torchrun-style and Slurm launches).
struct TENAX_API World {
  LaunchInfo info;
  int rank = 0;
  int size = 1;
  int local_rank = 0;
  std::shared_ptr<StoreServer> store_server;
  std::shared_ptr<Store> store;
  std::shared_ptr<Communicator> comm;
};

// Bootstraps from the environment and builds the world communicator (a collective: every rank
// calls it) with CommOptions::from_environment(). init() and connect() are the launch edge:
// they also give logging and the flight recorder the environment's options
// (LogOptions::from_environment, FlightRecorderOptions::from_environment) unless the program
// set its own before. Throws ConfigError for bad input, StoreError/TimeoutError when peers do not arrive.
// Thread rules: once per process, from any one thread; the World it returns is plain data plus
// objects whose own rules apply (Store, StoreServer, Communicator).
TENAX_API World init(InitOptions options = {});

// The first half of init(): identity and the store (hosted here when this rank must), no
// communicator. Elastic training (ElasticRunner) builds its communicators per generation.
TENAX_API World connect(InitOptions options = {});

}  // namespace tenax
