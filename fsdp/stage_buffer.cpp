#include "fsdp/stage_buffer.h"

#include <ATen/ATen.h>

#include <stdexcept>

#include "fsdp/torch_interop.h"

namespace fsdp {

StageBuffer::StageBuffer(std::string name, std::int64_t numel, ElementType dtype,
                         c10::Device device)
    : name_(std::move(name)),
      tensor_(at::zeros({numel}, at::TensorOptions().dtype(scalar_type_of(dtype)).device(device))) {
}

void StageBuffer::claim(const std::string& stage) {
  if (may_claim(stage)) {
    holder_ = stage;
    return;
  }
  throw std::logic_error("stage '" + stage + "' needs the " + name_ + ", which stage '" + holder_ +
                         "' still holds (restored, an all-gather in flight, or gradients not "
                         "yet reduced); it must be released (or its gradients reduced) first. "
                         "See Note [Buffer ordering] in fsdp/stage_buffer.h.");
}

void StageBuffer::give_up(const std::string& stage) {
  if (holder_ == stage) holder_.clear();
}

}  // namespace fsdp
