#include <cuda_runtime_api.h>
#include <dlfcn.h>

#include <string>

#include "fsdp/communication_checks.h"
#include "fsdp/errors.h"
#include "fsdp/launch/cuda_devices.h"

namespace fsdp::launch {

namespace {

// Whether an NVIDIA driver is installed at all: the CUDA runtime reports a
// missing driver and an old one alike (cudaErrorInsufficientDriver).
bool driver_installed() {
  void* driver = dlopen("libcuda.so.1", RTLD_LAZY | RTLD_LOCAL);
  if (driver != nullptr) dlclose(driver);
  return driver != nullptr;
}

}  // namespace

int cuda_device_count() {
  int count = 0;
  const cudaError_t status = cudaGetDeviceCount(&count);
  if (status == cudaSuccess) return count;
  cudaGetLastError();  // clear the error
  // No device, or no driver at all: a machine without GPUs, not an error.
  if (status == cudaErrorNoDevice) return 0;
  if (status == cudaErrorInsufficientDriver && !driver_installed()) return 0;
  if (status == cudaErrorInsufficientDriver) {
    throw ConfigurationError(std::string("cudaGetDeviceCount: ") + cudaGetErrorString(status) +
                             ": the NVIDIA driver is older than this CUDA runtime needs; update "
                             "it, or use --backend mpi");
  }
  throw ConfigurationError(std::string("cudaGetDeviceCount failed: ") + cudaGetErrorString(status) +
                           " (use --backend mpi to run on the CPU)");
}

std::string cuda_device_uuid(int device) {
  cudaDeviceProp properties{};
  const cudaError_t status = cudaGetDeviceProperties(&properties, device);
  if (status != cudaSuccess) {
    detail::throw_communication_error("cudaGetDeviceProperties(" + std::to_string(device) + ")",
                                      cudaGetErrorString(status), __FILE__, __LINE__);
  }
  static const char kHex[] = "0123456789abcdef";
  std::string uuid;
  for (const char byte : properties.uuid.bytes) {
    const auto value = static_cast<unsigned char>(byte);
    uuid += kHex[value >> 4];
    uuid += kHex[value & 15];
  }
  return uuid;
}

void bind_cuda_device(int device) {
  const cudaError_t status = cudaSetDevice(device);
  if (status != cudaSuccess) {
    detail::throw_communication_error("cudaSetDevice(" + std::to_string(device) + ")",
                                      cudaGetErrorString(status), __FILE__, __LINE__);
  }
}

}  // namespace fsdp::launch
