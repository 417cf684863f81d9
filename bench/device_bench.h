// fsdp-bench --case device: the runtime's device work against the GPU's own
// copy bandwidth, on a CUDA libtorch with the NCCL backend.
//
// For each shard size: a device-to-device copy of the float32 shard (the
// bandwidth baseline: bytes read + written per second), restore_parameters()
// of a stage with float32 shards and bfloat16 buffers (the copy-and-cast into
// the buffer plus the all-gather: 4 bytes read and 2 written per element at
// world size 1), and one fused AdamW step over the shard (16 bytes read, 12
// written per element). Each ratio is the operation's bytes per second over
// the copy's: 1.0 is the memory system's speed.
#pragma once

#include <cstdint>
#include <vector>

#include "fsdp/launch/runtime.h"

namespace fsdp::bench {

struct DeviceBenchResult {
  std::int64_t elements = 0;  // of the float32 shard
  double copy_gbps = 0;       // read + written, GB/s
  double restore_gbps = 0;
  double adamw_gbps = 0;
  double restore_ratio() const { return restore_gbps / copy_gbps; }
  double adamw_ratio() const { return adamw_gbps / copy_gbps; }
};

// REQUIRES: runtime.uses_nccl() (a GPU per rank and a CUDA libtorch); throws
// std::invalid_argument saying why otherwise. Medians of `iterations` timed runs
// after two warm-ups, slowest rank.
std::vector<DeviceBenchResult> run_device_bench(launch::Runtime& runtime,
                                                const std::vector<std::int64_t>& elements,
                                                int iterations);

}  // namespace fsdp::bench
