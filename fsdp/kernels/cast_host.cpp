// Host conversions. The 16-bit types come from c10's small, header-only
// BFloat16/Half types, which implement round-to-nearest-even exactly as
// PyTorch does, so a host cast here and a tensor `.to()` agree bit for bit.
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstring>
#include <stdexcept>
#include <string>

#include "fsdp/kernels/cast.h"

namespace fsdp::kernels {
namespace {

bool is_castable_float(ElementType type) {
  return type == ElementType::kFloat32 || type == ElementType::kBFloat16 ||
         type == ElementType::kFloat16;
}

template <typename Source, typename Destination>
void convert(const void* source, void* destination, std::int64_t count) {
  const Source* in = static_cast<const Source*>(source);
  Destination* out = static_cast<Destination*>(destination);
  for (std::int64_t i = 0; i < count; ++i) {
    out[i] = static_cast<Destination>(static_cast<float>(in[i]));
  }
}

template <typename Source>
void convert_from(const void* source, void* destination, ElementType destination_type,
                  std::int64_t count) {
  switch (destination_type) {
    case ElementType::kFloat32:
      return convert<Source, float>(source, destination, count);
    case ElementType::kBFloat16:
      return convert<Source, c10::BFloat16>(source, destination, count);
    case ElementType::kFloat16:
      return convert<Source, c10::Half>(source, destination, count);
    default:
      throw std::logic_error("cast_on_host: unreachable destination type");
  }
}

template <typename T>
void divide(void* values, std::int64_t count, T divisor) {
  T* data = static_cast<T*>(values);
  for (std::int64_t i = 0; i < count; ++i) data[i] /= divisor;
}

}  // namespace

bool is_supported_cast(ElementType source_type, ElementType destination_type) {
  return source_type == destination_type ||
         (is_castable_float(source_type) && is_castable_float(destination_type));
}

void cast_on_host(const void* source, ElementType source_type, void* destination,
                  ElementType destination_type, std::int64_t count) {
  if (!is_supported_cast(source_type, destination_type)) {
    throw std::invalid_argument("cast_on_host: no conversion from " +
                                std::string(element_type_name(source_type)) + " to " +
                                std::string(element_type_name(destination_type)));
  }
  if (count <= 0) return;
  if (source_type == destination_type) {
    if (source != destination) std::memmove(destination, source, count * element_size(source_type));
    return;
  }
  switch (source_type) {
    case ElementType::kFloat32:
      return convert_from<float>(source, destination, destination_type, count);
    case ElementType::kBFloat16:
      return convert_from<c10::BFloat16>(source, destination, destination_type, count);
    case ElementType::kFloat16:
      return convert_from<c10::Half>(source, destination, destination_type, count);
    default:
      throw std::logic_error("cast_on_host: unreachable source type");
  }
}

void divide_on_host(void* values, ElementType type, std::int64_t count, double divisor) {
  switch (type) {
    case ElementType::kFloat32:
      return divide<float>(values, count, static_cast<float>(divisor));
    case ElementType::kFloat64:
      return divide<double>(values, count, divisor);
    default:
      throw std::invalid_argument("divide_on_host: " + std::string(element_type_name(type)) +
                                  " is not float32 or float64");
  }
}

}  // namespace fsdp::kernels
