// The `restore` and `reduce` cases of fsdp-bench: restore_parameters() and
// reduce_gradients() beside the raw MPI collective moving the same bytes, in
// the same process, interleaved iteration by iteration so that machine noise
// hits both alike.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "fsdp/launch/runtime.h"

namespace fsdp::bench {

struct CollectiveBenchOptions {
  std::string case_name;                   // "restore" or "reduce"
  std::vector<std::int64_t> buffer_bytes;  // stage buffer sizes to measure
  std::string compute_dtype = "float32";   // float32 or bfloat16
  int warmup_iterations = 2;
  int iterations = 10;
  bool json = false;
};

struct CollectiveBenchResult {
  std::string case_name;
  std::int64_t bytes = 0;  // the stage buffer: what the collective moves in total
  int ranks = 1;
  std::string dtype;
  double time_seconds = 0;      // median over iterations of the slowest rank
  double raw_time_seconds = 0;  // the same for the raw MPI collective
  // nccl-tests conventions: algbw = bytes / time; busbw = algbw * (n - 1) / n.
  double algbw_gbps() const;
  double busbw_gbps() const;
  double raw_busbw_gbps() const;
  // ours / raw throughput, i.e. raw time / our time: 1.0 means no overhead.
  double ratio() const { return raw_time_seconds / time_seconds; }
};

// Collective: every rank runs every size. Results are identical on all ranks.
std::vector<CollectiveBenchResult> run_collective_bench(launch::Runtime& runtime,
                                                        const CollectiveBenchOptions& options);

}  // namespace fsdp::bench
