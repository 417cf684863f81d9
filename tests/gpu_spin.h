// A kernel that keeps the GPU busy, for tests of stream ordering and of the
// watchdog (a collective queued behind it cannot finish before it does).
#pragma once

#include <cstdint>

namespace fsdp::testing {

// Enqueues on `cuda_stream` (a cudaStream_t) one thread that spins for about
// `milliseconds` of GPU clock, then writes `value` to `*target`.
void spin_then_write(float* target, float value, std::int64_t milliseconds, void* cuda_stream);

}  // namespace fsdp::testing
