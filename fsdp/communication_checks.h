// Check helpers for MPI, CUDA and NCCL calls.
//
// A failed call throws CommunicationError whose message names the call, the
// library's own explanation, the rank, the host and file:line, e.g.
//   MPI_Iallgather(...) failed: MPI_ERR_TRUNCATE: message truncated
//   (rank 2/4 on node-7, fsdp/mpi_process_group.cpp:88)
#pragma once

#include <string>

namespace fsdp::detail {

// "rank 2/4 on node-7", from MPI_COMM_WORLD when MPI is initialised, else "rank 0/1 on <host>".
std::string this_rank_description();

[[noreturn]] void throw_communication_error(const std::string& call, const std::string& reason,
                                            const char* file, int line);

void check_mpi(int code, const char* call, const char* file, int line);

}  // namespace fsdp::detail

#define FSDP_MPI_CHECK(call) ::fsdp::detail::check_mpi((call), #call, __FILE__, __LINE__)
