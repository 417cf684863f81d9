// The `adamw` case of fsdp-bench: the fused shard AdamW beside
// torch::optim::AdamW on one parameter of the same element count, and beside
// a plain copy of the same bytes (how close the kernel runs to memory
// bandwidth), interleaved in the same process. Single-process: every rank runs
// it on its own; run it without mpirun.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace fsdp::bench {

struct AdamWBenchResult {
  std::int64_t elements = 0;
  double time_seconds = 0;        // fused kernel, median
  double torch_time_seconds = 0;  // torch::optim::AdamW::step(), median
  double copy_time_seconds = 0;   // copy of the four arrays' bytes, median
  // torch time / ours: how many times faster the fused kernel is.
  double speedup_over_torch() const { return torch_time_seconds / time_seconds; }
  // copy time / ours: 1.0 means the step costs no more than copying its bytes.
  double ratio_to_copy() const { return copy_time_seconds / time_seconds; }
};

std::vector<AdamWBenchResult> run_adamw_bench(const std::vector<std::int64_t>& elements,
                                              int iterations);

}  // namespace fsdp::bench
