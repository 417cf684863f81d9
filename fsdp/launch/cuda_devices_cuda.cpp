#include <cuda_runtime_api.h>

#include "fsdp/communication_checks.h"
#include "fsdp/launch/cuda_devices.h"

namespace fsdp::launch {

int cuda_device_count() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();  // no driver or no device: clear the sticky error, run on the host
    return 0;
  }
  return count;
}

void bind_cuda_device(int device) {
  const cudaError_t status = cudaSetDevice(device);
  if (status != cudaSuccess) {
    detail::throw_communication_error("cudaSetDevice(" + std::to_string(device) + ")",
                                      cudaGetErrorString(status), __FILE__, __LINE__);
  }
}

}  // namespace fsdp::launch
