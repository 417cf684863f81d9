// The `step` case of fsdp-bench: training-step throughput (tokens/s) of the
// runtime (MultiStageModel + reduce_gradients + ShardedAdamW), steps
// interleaved in one run:
//   world size 1: beside plain libtorch on the same model (the same layers
//     bound to ordinary tensors, forward, backward, torch::optim::AdamW);
//   larger: prefetch off beside prefetch on, with the host time per step spent
//     in collectives (the exposed communication: what was not hidden).
#pragma once

#include <cstdint>
#include <vector>

#include "fsdp/launch/runtime.h"

namespace fsdp::bench {

struct StepBenchOptions {
  std::int64_t hidden = 128;
  std::int64_t layers = 4;
  std::int64_t sequence = 64;
  std::int64_t batch = 8;  // global batch, split over ranks
  int zero_stage = 3;      // ZeRO-3 runs with 2 shared weight and gradient buffers
  int iterations = 10;
};

struct StepBenchResult {
  double tokens_per_second = 0;  // ours, global (prefetch off)
  // World size 1: plain libtorch, one process, whole batch.
  double plain_tokens_per_second = 0;
  // World size >= 2: prefetch on.
  double prefetch_tokens_per_second = 0;
  // Host milliseconds per step in collectives (median step, slowest rank).
  double exposed_milliseconds = 0;
  double prefetch_exposed_milliseconds = 0;
  // World size 1: ours / plain; larger: prefetch on / off.
  double ratio() const {
    return plain_tokens_per_second > 0 ? tokens_per_second / plain_tokens_per_second
                                       : prefetch_tokens_per_second / tokens_per_second;
  }
};

// Collective.
StepBenchResult run_step_bench(launch::Runtime& runtime, const StepBenchOptions& options);

}  // namespace fsdp::bench
