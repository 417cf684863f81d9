#include "gpu_spin.h"

#include <cuda_runtime_api.h>

#include <stdexcept>
#include <string>

namespace fsdp::testing {
namespace {

__global__ void spin_kernel(float* target, float value, long long cycles) {
  const long long start = clock64();
  while (clock64() - start < cycles) {
  }
  *target = value;
}

}  // namespace

void spin_then_write(float* target, float value, std::int64_t milliseconds, void* cuda_stream) {
  int device = 0;
  int clock_khz = 0;
  cudaGetDevice(&device);
  if (cudaDeviceGetAttribute(&clock_khz, cudaDevAttrClockRate, device) != cudaSuccess ||
      clock_khz <= 0) {
    clock_khz = 2000000;  // 2 GHz: a Hopper's boost clock
  }
  spin_kernel<<<1, 1, 0, static_cast<cudaStream_t>(cuda_stream)>>>(
      target, value, static_cast<long long>(clock_khz) * milliseconds);
  const cudaError_t status = cudaGetLastError();
  if (status != cudaSuccess) {
    throw std::runtime_error(std::string("spin_then_write: ") + cudaGetErrorString(status));
  }
}

}  // namespace fsdp::testing
