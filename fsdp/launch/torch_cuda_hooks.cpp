#include "fsdp/launch/torch_cuda_hooks.h"

#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAStream.h>

namespace fsdp::launch {

void use_torch_cuda_runtime(NcclProcessGroup& group) {
  const auto device = static_cast<c10::DeviceIndex>(group.cuda_device());
  group.set_compute_stream_source(
      [device] { return c10::cuda::getCurrentCUDAStream(device).stream(); });
  DeviceAllocator allocator;
  // Stream-ordered like cudaMallocAsync: a block freed here is reused on the
  // communication stream only after the work already enqueued there.
  allocator.allocate = [](std::size_t bytes, CUstream_st* stream) {
    return c10::cuda::CUDACachingAllocator::raw_alloc_with_stream(bytes, stream);
  };
  allocator.free = [](void* pointer, CUstream_st*) {
    c10::cuda::CUDACachingAllocator::raw_delete(pointer);
  };
  group.set_staging_allocator(std::move(allocator));
}

}  // namespace fsdp::launch
