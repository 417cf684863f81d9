// The `step` case of fsdp-bench: training-step throughput (tokens/s) of the
// runtime (MultiStageModel + reduce_gradients + ShardedAdamW), steps
// interleaved in one run:
//   world size 1: beside plain libtorch on the same model (the same layers
//     bound to ordinary tensors, forward, backward, torch::optim::AdamW);
//   larger: prefetch off and on, each with the gradient reduce-scatter at
//     once and asynchronous (overlapping the previous stage's backward), with
//     the host time per step spent in collectives (the exposed
//     communication: what was not hidden).
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

// One configuration of the runtime at world size >= 2.
struct StepBenchRow {
  bool prefetch = false;
  bool asynchronous_reduction = false;
  double tokens_per_second = 0;  // global
  // Host milliseconds per step in collectives (median step, slowest rank).
  double exposed_milliseconds = 0;
};

struct StepBenchResult {
  double tokens_per_second = 0;  // ours, global (world size >= 2: the first row's)
  double exposed_milliseconds = 0;
  // World size 1: plain libtorch, one process, whole batch.
  double plain_tokens_per_second = 0;
  // World size >= 2: prefetch off/on x asynchronous reduction off/on, the
  // first row both off; and whether every row's losses and gradient norms
  // were bitwise those of the first (neither option changes the arithmetic).
  std::vector<StepBenchRow> rows;
  bool rows_bitwise_equal = true;
  // World size 1: ours / plain. Larger: row / first row.
  double ratio() const { return tokens_per_second / plain_tokens_per_second; }
  double ratio(const StepBenchRow& row) const { return row.tokens_per_second / tokens_per_second; }
};

// Collective.
StepBenchResult run_step_bench(launch::Runtime& runtime, const StepBenchOptions& options);

}  // namespace fsdp::bench
