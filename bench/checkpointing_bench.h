// The `checkpointing` case of fsdp-bench: a dense Llama trained with and
// without activation checkpointing in one process, steps interleaved (the
// same noise falls on both), ZeRO-3 with 2 shared weight and gradient buffers:
//   - tokens/s of each (median step), and checkpointed / plain;
//   - the memory a step adds at its peak, in one more step of each: the
//     resident set's high-water mark (reset through /proc/self/clear_refs,
//     after malloc_trim) above the resident set when the step starts -- the
//     activations and their gradients, as the operating system sees them;
//     max over ranks;
//   - whether the losses and the gradient norms were bitwise equal, and the
//     collectives the same in number.
#pragma once

#include <cstdint>

#include "fsdp/launch/runtime.h"
#include "fsdp/stages/multi_stage_model.h"

namespace fsdp::bench {

struct CheckpointingBenchOptions {
  // Defaults: the 118 M-parameter model.
  std::int64_t hidden = 1024;
  std::int64_t layers = 8;
  std::int64_t heads = 8;
  std::int64_t intermediate = 2752;
  std::int64_t vocabulary = 8192;
  std::int64_t sequence = 512;
  std::int64_t rows_per_rank = 2;
  stages::ActivationCheckpointing mode = stages::ActivationCheckpointing::kLayers;
  int iterations = 3;
};

struct CheckpointingBenchResult {
  std::int64_t parameters = 0;
  double plain_tokens_per_second = 0;
  double checkpointed_tokens_per_second = 0;
  double plain_step_peak_mib = 0;  // max over ranks
  double checkpointed_step_peak_mib = 0;
  double plain_estimate_mib = 0;  // ModelMemory::activations, for comparison
  double checkpointed_estimate_mib = 0;
  bool losses_bitwise_equal = false;
  bool collectives_equal = false;
  double ratio() const { return checkpointed_tokens_per_second / plain_tokens_per_second; }
  double memory_ratio() const { return checkpointed_step_peak_mib / plain_step_peak_mib; }
};

// Collective.
CheckpointingBenchResult run_checkpointing_bench(launch::Runtime& runtime,
                                                 const CheckpointingBenchOptions& options);

}  // namespace fsdp::bench
