#include "comm/mpi_broadcast.h"

#include <dlfcn.h>

#include <cstring>
#include <string>
#include <vector>

#include "tenax/core/error.h"

namespace tenax::detail {
namespace {

// Open MPI's C API as its library exports it: handles are pointers, MPI_COMM_WORLD and MPI_CHAR
// the addresses of its predefined objects (ompi_mpi_comm_world, ompi_mpi_char).
struct OpenMpi {
  int (*initialized)(int*) = nullptr;
  int (*init)(int*, char***) = nullptr;
  int (*bcast)(void*, int, void*, int, void*) = nullptr;
  int (*finalize)() = nullptr;
  void* comm_world = nullptr;
  void* mpi_char = nullptr;
};

// Opened once for the process and never closed: Open MPI's components stay mapped.
OpenMpi open_mpi(int rank) {
  std::string errors;
  void* lib = nullptr;
  for (const char* name : {"libmpi.so.40", "libmpi.so"}) {
    lib = ::dlopen(name, RTLD_NOW | RTLD_GLOBAL);  // its plugins resolve against it
    if (lib != nullptr) break;
    const char* why = ::dlerror();
    errors += std::string(errors.empty() ? "" : "; ") + (why ? why : name);
  }
  OpenMpi m;
  if (lib != nullptr) {
    m.initialized = reinterpret_cast<int (*)(int*)>(::dlsym(lib, "MPI_Initialized"));
    m.init = reinterpret_cast<int (*)(int*, char***)>(::dlsym(lib, "MPI_Init"));
    m.bcast = reinterpret_cast<int (*)(void*, int, void*, int, void*)>(::dlsym(lib, "MPI_Bcast"));
    m.finalize = reinterpret_cast<int (*)()>(::dlsym(lib, "MPI_Finalize"));
    m.comm_world = ::dlsym(lib, "ompi_mpi_comm_world");
    m.mpi_char = ::dlsym(lib, "ompi_mpi_char");
    if (!m.comm_world || !m.mpi_char) errors = "the MPI library found is not Open MPI's";
  }
  if (lib == nullptr || !m.initialized || !m.init || !m.bcast || !m.finalize || !m.comm_world ||
      !m.mpi_char) {
    throw ConfigError("rank " + std::to_string(rank) + ": under mpirun tenax passes the store's "
                      "address through Open MPI (libmpi.so.40, opened at run time), which it "
                      "could not use (" + errors + "): install Open MPI's library, or set "
                      "TENAX_STORE_ADDR=host:port (a running tenax-store) for every rank");
  }
  return m;
}

}  // namespace

std::string mpi_broadcast_from_rank0(const std::string& payload, size_t max, int rank) {
  static const OpenMpi mpi = open_mpi(rank);
  std::vector<char> buf(max, 0);
  if (rank == 0) payload.copy(buf.data(), max);
  int initialized = 0;
  mpi.initialized(&initialized);
  if (!initialized) mpi.init(nullptr, nullptr);
  mpi.bcast(buf.data(), static_cast<int>(max), mpi.mpi_char, 0, mpi.comm_world);
  if (!initialized) mpi.finalize();
  return std::string(buf.data(), ::strnlen(buf.data(), max));
}

}  // namespace tenax::detail
