// The CUDA devices this process can see. Torch-free and CUDA-header-free, so
// that builds without CUDA compile the same callers.
#pragma once

namespace fsdp::launch {

// Number of usable CUDA devices: 0 when built without CUDA, or when there is no
// driver or no device (those are not errors: the job then runs on MPI).
int cuda_device_count();

// Makes `device` this process's current CUDA device. Throws CommunicationError naming the call.
void bind_cuda_device(int device);

}  // namespace fsdp::launch
