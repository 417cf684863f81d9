// Built when no CUDA toolkit was found: there are no devices to bind.
#include <stdexcept>

#include "fsdp/launch/cuda_devices.h"

namespace fsdp::launch {

int cuda_device_count() { return 0; }

std::string cuda_device_uuid(int device) {
  throw std::runtime_error("no CUDA device " + std::to_string(device) +
                           ": this build of fsdp-runtime has no CUDA support");
}

void bind_cuda_device(int device) {
  throw std::runtime_error("cannot bind CUDA device " + std::to_string(device) +
                           ": this build of fsdp-runtime has no CUDA support");
}

}  // namespace fsdp::launch
