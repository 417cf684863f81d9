// The NCCL watchdog (Note [Collective watchdog]) on a real GPU: an all-reduce
// queued behind a 20 s kernel, with the group's timeout at 2 s, then a host
// wait with no deadline of its own (as `.item()` would be). The watchdog must
// end the job with its message long before the kernel finishes; ctest looks
// for that message. Prints "[  SKIPPED ]" without a GPU.
#include <ATen/Context.h>
#include <cuda_runtime_api.h>

#include <chrono>
#include <cstdio>

#include "fsdp/launch/cuda_devices.h"
#include "fsdp/launch/runtime.h"
#include "gpu_spin.h"

int main(int argc, char** argv) {
  fsdp::launch::Runtime runtime(&argc, &argv);
  if (fsdp::launch::cuda_device_count() == 0 || !at::hasCUDA()) {
    std::printf("[  SKIPPED ] no CUDA device, or a CPU-only libtorch\n");
    return 0;
  }
  runtime.connect({fsdp::launch::BackendChoice::kNccl, fsdp::kDefaultCollectiveTimeout});
  auto group = runtime.process_group();
  group->set_timeout(std::chrono::seconds(2));
  float* value = nullptr;
  if (cudaMalloc(reinterpret_cast<void**>(&value), sizeof(float)) != cudaSuccess) {
    std::printf("FAIL: cudaMalloc\n");
    return 1;
  }
  fsdp::testing::spin_then_write(value, 1.0f, 20000, group->cuda_compute_stream());
  const auto start = std::chrono::steady_clock::now();
  group->all_reduce({value, 1, fsdp::ElementType::kFloat32, fsdp::MemoryLocation::kCuda},
                    fsdp::ReduceOp::kSum);
  cudaDeviceSynchronize();
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::printf("FAIL: the watchdog did not end the job; the host waited %.1f s\n", seconds);
  return 1;
}
