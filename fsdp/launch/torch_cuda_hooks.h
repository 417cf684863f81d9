// Ties the NCCL process group to libtorch's CUDA runtime, when the libtorch in
// use has one (built only then: FSDP_TORCH_HAS_CUDA).
#pragma once

#include "fsdp/nccl_process_group.h"

namespace fsdp::launch {

// The group's 16-bit staging buffers come from libtorch's caching allocator
// (so they are counted in torch.cuda.memory_allocated and reuse its cached
// blocks, instead of a second pool beside it), and its collectives order
// themselves after libtorch's current stream on the group's device, read at
// each enqueue and wait (Note [Comm stream ordering]).
void use_torch_cuda_runtime(NcclProcessGroup& group);

}  // namespace fsdp::launch
