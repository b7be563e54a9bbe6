#pragma once

// The one use of MPI: under mpirun, rank 0's store address reaches the other ranks through
// Open MPI's own broadcast. libmpi is opened at run time (dlopen), never linked: the library
// builds and runs without Open MPI, and a job under mpirun uses the one its launcher brings.
// Internal to the comm layer.

#include <string>

namespace tenax::detail {

// Broadcasts `payload` (at most `max` bytes; rank 0's counts) from rank 0 to every rank of
// MPI_COMM_WORLD and returns it: MPI_Init (unless initialized), MPI_Bcast, MPI_Finalize (when
// it initialized). A collective of every rank. Throws ConfigError naming the rank, the library
// it tried and TENAX_STORE_ADDR when Open MPI's libmpi cannot be opened.
std::string mpi_broadcast_from_rank0(const std::string& payload, size_t max, int rank);

}  // namespace tenax::detail
