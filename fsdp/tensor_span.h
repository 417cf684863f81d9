// A typed, counted view of contiguous memory: what collectives and kernels take.
//
// Collectives never take a hand-computed byte count (the classic MPI bug): the
// count and the element type travel together in a TensorSpan, built from a
// tensor by `span_of` (fsdp/torch_interop.h) or from a std::vector by `host_span`.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "fsdp/element_type.h"

namespace fsdp {

enum class MemoryLocation : std::uint8_t { kHost, kCuda };

struct TensorSpan {
  void* data = nullptr;
  std::int64_t numel = 0;
  ElementType type = ElementType::kFloat32;
  MemoryLocation location = MemoryLocation::kHost;

  std::int64_t bytes() const { return numel * element_size(type); }

  // The sub-span [offset, offset + count). Throws std::out_of_range when it does not fit.
  TensorSpan slice(std::int64_t offset, std::int64_t count) const {
    if (offset < 0 || count < 0 || offset > numel || count > numel - offset) {
      throw std::out_of_range("tensor span: slice [" + std::to_string(offset) + ", " +
                              std::to_string(offset + count) + ") is outside a span of " +
                              std::to_string(numel) + " elements");
    }
    return {static_cast<char*>(data) + offset * element_size(type), count, type, location};
  }
};

template <typename T>
struct ElementTypeOf;
template <>
struct ElementTypeOf<float> {
  static constexpr ElementType value = ElementType::kFloat32;
};
template <>
struct ElementTypeOf<double> {
  static constexpr ElementType value = ElementType::kFloat64;
};
template <>
struct ElementTypeOf<std::int32_t> {
  static constexpr ElementType value = ElementType::kInt32;
};
template <>
struct ElementTypeOf<std::int64_t> {
  static constexpr ElementType value = ElementType::kInt64;
};
template <>
struct ElementTypeOf<std::uint8_t> {
  static constexpr ElementType value = ElementType::kUInt8;
};
template <>
struct ElementTypeOf<std::int8_t> {
  static constexpr ElementType value = ElementType::kInt8;
};

// A span over a host vector of a plain arithmetic type.
template <typename T>
TensorSpan host_span(std::vector<T>& values) {
  return {values.data(), static_cast<std::int64_t>(values.size()), ElementTypeOf<T>::value,
          MemoryLocation::kHost};
}

// A span over 16-bit words holding bfloat16 or float16 bit patterns.
inline TensorSpan host_span_16bit(std::vector<std::uint16_t>& words, ElementType type) {
  if (element_size(type) != 2) {
    throw std::invalid_argument("host_span_16bit: " + std::string(element_type_name(type)) +
                                " is not a 16-bit type");
  }
  return {words.data(), static_cast<std::int64_t>(words.size()), type, MemoryLocation::kHost};
}

}  // namespace fsdp
