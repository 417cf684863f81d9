#include "fsdp/torch_interop.h"

#include <stdexcept>
#include <string>

namespace fsdp {

ElementType element_type_of(c10::ScalarType type) {
  switch (type) {
    case c10::ScalarType::Float:
      return ElementType::kFloat32;
    case c10::ScalarType::Double:
      return ElementType::kFloat64;
    case c10::ScalarType::BFloat16:
      return ElementType::kBFloat16;
    case c10::ScalarType::Half:
      return ElementType::kFloat16;
    case c10::ScalarType::Char:
      return ElementType::kInt8;
    case c10::ScalarType::Byte:
      return ElementType::kUInt8;
    case c10::ScalarType::Int:
      return ElementType::kInt32;
    case c10::ScalarType::Long:
      return ElementType::kInt64;
    default:
      throw std::invalid_argument(std::string("the runtime does not handle tensors of type ") +
                                  c10::toString(type));
  }
}

c10::ScalarType scalar_type_of(ElementType type) {
  switch (type) {
    case ElementType::kFloat32:
      return c10::ScalarType::Float;
    case ElementType::kFloat64:
      return c10::ScalarType::Double;
    case ElementType::kBFloat16:
      return c10::ScalarType::BFloat16;
    case ElementType::kFloat16:
      return c10::ScalarType::Half;
    case ElementType::kInt8:
      return c10::ScalarType::Char;
    case ElementType::kUInt8:
      return c10::ScalarType::Byte;
    case ElementType::kInt32:
      return c10::ScalarType::Int;
    case ElementType::kInt64:
      return c10::ScalarType::Long;
  }
  throw std::invalid_argument("scalar_type_of: unknown element type");
}

TensorSpan span_of(const at::Tensor& tensor) {
  if (!tensor.is_contiguous()) {
    throw std::invalid_argument("span_of: the tensor of shape " + c10::str(tensor.sizes()) +
                                " is not contiguous");
  }
  MemoryLocation location = MemoryLocation::kHost;
  if (tensor.is_cuda()) {
    location = MemoryLocation::kCuda;
  } else if (!tensor.is_cpu()) {
    throw std::invalid_argument("span_of: tensors on " + c10::str(tensor.device()) +
                                " are not supported (CPU or CUDA only)");
  }
  return {tensor.data_ptr(), tensor.numel(), element_type_of(tensor.scalar_type()), location};
}

}  // namespace fsdp
