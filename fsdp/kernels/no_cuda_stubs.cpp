// Built instead of the .cu files when no CUDA compiler was found: the device
// entry points exist, and say clearly why they cannot run.
#include <stdexcept>
#include <string>

#include "fsdp/kernels/adamw.h"
#include "fsdp/kernels/cast.h"

namespace fsdp::kernels {
namespace {

[[noreturn]] void no_cuda(const char* function) {
  throw std::runtime_error(std::string(function) +
                           ": this build of fsdp-runtime has no CUDA kernels (no CUDA compiler "
                           "was found at configure time)");
}

}  // namespace

bool cuda_kernels_available() { return false; }

void cast_on_device(const void*, ElementType, void*, ElementType, std::int64_t, void*) {
  no_cuda("cast_on_device");
}

void adamw_step_on_device(const AdamWArrays&, const AdamWHyperparameters&, std::int64_t, double,
                          float, void*) {
  no_cuda("adamw_step_on_device");
}

}  // namespace fsdp::kernels
