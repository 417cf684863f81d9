// Timing helpers shared by the fsdp-bench cases.
#pragma once

#include <mpi.h>

#include <algorithm>
#include <vector>

namespace fsdp::bench {

// The median (the mean of the two middle values for an even count).
// REQUIRES: values is not empty.
inline double median(std::vector<double> values) {
  std::sort(values.begin(), values.end());
  const std::size_t middle = values.size() / 2;
  return values.size() % 2 ? values[middle] : (values[middle - 1] + values[middle]) / 2;
}

// Runs `operation` once on every rank and returns the slowest rank's time:
// a collective (or a data-parallel step) is as fast as its last participant.
template <typename Operation>
double time_collectively(MPI_Comm communicator, Operation&& operation) {
  MPI_Barrier(communicator);
  const double start = MPI_Wtime();
  operation();
  double elapsed = MPI_Wtime() - start;
  MPI_Allreduce(MPI_IN_PLACE, &elapsed, 1, MPI_DOUBLE, MPI_MAX, communicator);
  return elapsed;
}

}  // namespace fsdp::bench
