// Built instead of cast_cuda.cu when no CUDA compiler was found: the device
// entry points exist, and say clearly why they cannot run.
#include <stdexcept>

#include "kernels/cast.h"

namespace fsdp::kernels {

bool cuda_kernels_available() { return false; }

void cast_on_device(const void*, ElementType, void*, ElementType, std::int64_t, void*) {
  throw std::runtime_error(
      "cast_on_device: this build of fsdp-runtime has no CUDA kernels (no CUDA compiler was "
      "found at configure time)");
}

}  // namespace fsdp::kernels
