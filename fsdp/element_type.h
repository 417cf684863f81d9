// Element types that the runtime moves between ranks and stores in shards.
//
// This header is deliberately free of libtorch: the layout, the process groups
// and the kernels use it, and none of them need a tensor library to compile.
// `fsdp/torch_interop.h` maps these to and from `at::ScalarType`.
#pragma once

#include <cstdint>
#include <string_view>

namespace fsdp {

enum class ElementType : std::uint8_t {
  kFloat32,
  kFloat64,
  kBFloat16,
  kFloat16,
  kInt8,
  kUInt8,
  kInt32,
  kInt64,
};

// Size of one element in bytes.
std::int64_t element_size(ElementType type);

// A stable lowercase name ("float32", "bfloat16", ...), used in messages and files.
std::string_view element_type_name(ElementType type);

// True for the floating-point types (the only ones that can be averaged).
bool is_floating_point(ElementType type);

// True for the 16-bit floating-point types whose sums go through float32.
bool is_half_precision(ElementType type);

}  // namespace fsdp
