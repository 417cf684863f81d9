// Small helpers shared by the collective checkpoint operations.
#pragma once

#include <ATen/core/Tensor.h>

#include <vector>

#include "fsdp/fsdp.h"

namespace fsdp::checkpoint {

// The one process group every stage in `stages` uses. Throws
// std::invalid_argument when `stages` is empty or the groups differ.
ProcessGroup& common_group(const std::vector<Fsdp*>& stages);

// `tensor` moved where `group`'s collectives want it (host for MPI, CUDA for NCCL).
at::Tensor on_group_device(const at::Tensor& tensor, const ProcessGroup& group);

}  // namespace fsdp::checkpoint
