// Conversions between libtorch tensors and the runtime's torch-free types.
#pragma once

#include <ATen/core/Tensor.h>

#include "fsdp/element_type.h"
#include "fsdp/tensor_span.h"

namespace fsdp {

// Throws std::invalid_argument for a scalar type the runtime does not move.
ElementType element_type_of(c10::ScalarType type);
c10::ScalarType scalar_type_of(ElementType type);

// A span over a contiguous CPU or CUDA tensor's elements.
// Throws std::invalid_argument for a non-contiguous tensor or another device.
TensorSpan span_of(const at::Tensor& tensor);

}  // namespace fsdp
