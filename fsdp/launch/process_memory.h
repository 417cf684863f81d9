// The resident memory of this process, as Linux reports it in
// /proc/self/status: what fsdp-train compares with the runtime's own memory
// report, and what the benchmarks and tests measure an operation's peak with.
#pragma once

#include <cstdint>

namespace fsdp::launch {

struct ResidentMemory {
  std::int64_t current = -1;  // VmRSS in bytes; -1 where /proc does not say
  std::int64_t peak = -1;     // VmHWM: the high-water mark since start or the last reset
};

// Reads both fields now. Cheap (one small file), but not for inner loops.
ResidentMemory resident_memory();

// Starts a new high-water mark at the current resident set (Linux >= 4.0
// does this on writing "5" to /proc/self/clear_refs). Returns false when the
// kernel did not: the peak is then still the one since the process started.
bool reset_peak_resident_memory();

}  // namespace fsdp::launch
