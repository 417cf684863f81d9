#include "fsdp/checkpoint/stage_group.h"

#include <ATen/ATen.h>

#include <stdexcept>

namespace fsdp::checkpoint {

ProcessGroup& common_group(const std::vector<Fsdp*>& stages) {
  if (stages.empty()) throw std::invalid_argument("checkpoint: no stages");
  for (const auto* stage : stages) {
    if (&stage->group() != &stages.front()->group()) {
      throw std::invalid_argument("checkpoint: stages \"" + stages.front()->stage_name() +
                                  "\" and \"" + stage->stage_name() +
                                  "\" have different process groups");
    }
  }
  return stages.front()->group();
}

at::Tensor on_group_device(const at::Tensor& tensor, const ProcessGroup& group) {
  return group.memory_location() == MemoryLocation::kCuda ? tensor.to(at::kCUDA) : tensor;
}

}  // namespace fsdp::checkpoint
