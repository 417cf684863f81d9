#include "fsdp/communication_checks.h"

#include <mpi.h>
#include <unistd.h>

#include "fsdp/process_group.h"

namespace fsdp::detail {

std::string this_rank_description() {
  int rank = 0;
  int size = 1;
  int initialized = 0;
  int finalized = 0;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  if (initialized && !finalized) {
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
  }
  char host[256] = "unknown-host";
  gethostname(host, sizeof(host) - 1);
  return "rank " + std::to_string(rank) + "/" + std::to_string(size) + " on " + host;
}

void throw_communication_error(const std::string& call, const std::string& reason, const char* file,
                               int line) {
  throw CommunicationError(call + " failed: " + reason + " (" + this_rank_description() + ", " +
                           file + ":" + std::to_string(line) + ")");
}

void check_mpi(int code, const char* call, const char* file, int line) {
  if (code == MPI_SUCCESS) return;
  char text[MPI_MAX_ERROR_STRING] = {};
  int length = 0;
  MPI_Error_string(code, text, &length);
  throw_communication_error(call, std::string(text, length), file, line);
}

}  // namespace fsdp::detail
