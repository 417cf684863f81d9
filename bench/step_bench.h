// The `step` case of fsdp-bench: training-step throughput (tokens/s) of the
// runtime (MultiStageModel + reduce_gradients + ShardedAdamW) beside plain
// libtorch on the same model (the same layers bound to ordinary tensors,
// forward, backward, torch::optim::AdamW), steps interleaved in one process.
#pragma once

#include <cstdint>
#include <vector>

#include "launch/runtime.h"

namespace fsdp::bench {

struct StepBenchOptions {
  std::int64_t hidden = 128;
  std::int64_t layers = 4;
  std::int64_t sequence = 64;
  std::int64_t batch = 8;  // global batch, split over ranks
  int zero_stage = 1;
  int iterations = 10;
};

struct StepBenchResult {
  double tokens_per_second = 0;        // ours, global
  double plain_tokens_per_second = 0;  // plain libtorch, one process, whole batch (rank 0 only)
  double ratio() const { return tokens_per_second / plain_tokens_per_second; }
};

// Collective. The plain baseline runs on every rank with the whole batch only
// at world size 1 (where the two do the same work); at larger sizes it is
// reported as 0 and the ratio is meaningless.
StepBenchResult run_step_bench(launch::Runtime& runtime, const StepBenchOptions& options);

}  // namespace fsdp::bench
