// The CUDA devices this process can see. Torch-free and CUDA-header-free, so
// that builds without CUDA compile the same callers.
#pragma once

#include <string>

namespace fsdp::launch {

// Number of usable CUDA devices: 0 when built without CUDA, or when there is no
// driver or no device (those are not errors: the job then runs on MPI).
// Throws ConfigurationError for a driver too old for this CUDA runtime, or any
// other failure: a GPU machine that cannot be used is not a machine without GPUs.
// Creates no CUDA context.
int cuda_device_count();

// The UUID of `device` (32 hex digits): what tells two GPUs apart across
// processes that number their visible devices differently. Creates no context.
std::string cuda_device_uuid(int device);

// Makes `device` this process's current CUDA device. Throws CommunicationError naming the call.
void bind_cuda_device(int device);

}  // namespace fsdp::launch
