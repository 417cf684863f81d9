#include "fsdp/element_type.h"

#include <stdexcept>
#include <string>

namespace fsdp {

std::int64_t element_size(ElementType type) {
  switch (type) {
    case ElementType::kFloat64:
    case ElementType::kInt64:
      return 8;
    case ElementType::kFloat32:
    case ElementType::kInt32:
      return 4;
    case ElementType::kBFloat16:
    case ElementType::kFloat16:
      return 2;
    case ElementType::kInt8:
    case ElementType::kUInt8:
      return 1;
  }
  throw std::invalid_argument("element_size: unknown element type " +
                              std::to_string(static_cast<int>(type)));
}

std::string_view element_type_name(ElementType type) {
  switch (type) {
    case ElementType::kFloat32:
      return "float32";
    case ElementType::kFloat64:
      return "float64";
    case ElementType::kBFloat16:
      return "bfloat16";
    case ElementType::kFloat16:
      return "float16";
    case ElementType::kInt8:
      return "int8";
    case ElementType::kUInt8:
      return "uint8";
    case ElementType::kInt32:
      return "int32";
    case ElementType::kInt64:
      return "int64";
  }
  return "unknown";
}

bool is_floating_point(ElementType type) {
  return type == ElementType::kFloat32 || type == ElementType::kFloat64 ||
         type == ElementType::kBFloat16 || type == ElementType::kFloat16;
}

bool is_half_precision(ElementType type) {
  return type == ElementType::kBFloat16 || type == ElementType::kFloat16;
}

}  // namespace fsdp
