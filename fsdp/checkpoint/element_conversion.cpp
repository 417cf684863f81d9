#include "fsdp/checkpoint/element_conversion.h"

#include <ATen/ATen.h>

#include <array>
#include <cmath>
#include <cstring>
#include <limits>

#include "fsdp/checkpoint/checkpoint_error.h"

namespace fsdp::checkpoint {
namespace {

// float8_e4m3fn: 1 sign, 4 exponent bits (bias 7), 3 mantissa bits; no
// infinities, and S.1111.111 is NaN (the "fn" variant).
float decode_float8_e4m3fn(std::uint8_t bits) {
  const int sign = bits >> 7, exponent = (bits >> 3) & 0xf, mantissa = bits & 0x7;
  if (exponent == 0xf && mantissa == 0x7) return std::numeric_limits<float>::quiet_NaN();
  const float magnitude = exponent == 0 ? std::ldexp(static_cast<float>(mantissa), -9)
                                        : std::ldexp(1.0f + mantissa / 8.0f, exponent - 7);
  return sign ? -magnitude : magnitude;
}

// float8_e5m2 is the upper byte of an IEEE half: same exponent, fewer mantissa bits.
float decode_float8_e5m2(std::uint8_t bits) {
  return static_cast<float>(
      c10::Half(static_cast<std::uint16_t>(bits << 8), c10::Half::from_bits()));
}

template <float (*Decode)(std::uint8_t)>
const std::array<float, 256>& decode_table() {
  static const std::array<float, 256> table = [] {
    std::array<float, 256> values{};
    for (int bits = 0; bits < 256; ++bits) values[bits] = Decode(static_cast<std::uint8_t>(bits));
    return values;
  }();
  return table;
}

// NaN has an all-ones exponent and a non-zero mantissa: with the sign masked
// off, the bits compare above those of infinity. `Signed` is the signed
// integer of the element's width: with the sign bit masked off the compare is
// the same, and signed compares are what SSE2 has. The first pass only asks
// whether there is any NaN (an OR over the block, which the compiler
// vectorises); the count is taken only when there is.
template <typename Signed>
[[gnu::always_inline]] inline std::int64_t count_above(const void* data, std::int64_t count,
                                                       Signed magnitude_mask, Signed infinity) {
  const auto* bits = static_cast<const Signed*>(data);
  Signed any = 0;
  for (std::int64_t i = 0; i < count; ++i)
    any |= static_cast<Signed>((bits[i] & magnitude_mask) > infinity);
  if (any == 0) return 0;
  std::int64_t total = 0;
  for (std::int64_t i = 0; i < count; ++i) total += (bits[i] & magnitude_mask) > infinity;
  return total;
}

[[gnu::always_inline]] inline std::int64_t count_nan_inline(const void* data,
                                                            SafetensorsDtype dtype,
                                                            std::int64_t count) {
  switch (dtype) {
    case SafetensorsDtype::kFloat64:
      return count_above<std::int64_t>(data, count, 0x7fffffffffffffffll, 0x7ff0000000000000ll);
    case SafetensorsDtype::kFloat32:
      return count_above<std::int32_t>(data, count, 0x7fffffff, 0x7f800000);
    case SafetensorsDtype::kBFloat16:
      return count_above<std::int16_t>(data, count, 0x7fff, 0x7f80);
    case SafetensorsDtype::kFloat16:
      return count_above<std::int16_t>(data, count, 0x7fff, 0x7c00);
    case SafetensorsDtype::kFloat8E5M2:
      return count_above<std::int8_t>(data, count, 0x7f, 0x7c);
    case SafetensorsDtype::kFloat8E4M3:  // no infinity; only S.1111.111 is NaN
      return count_above<std::int8_t>(data, count, 0x7f, 0x7e);
    default:
      return 0;
  }
}

// The same loop compiled for AVX2, twice the width of the x86-64 baseline
// (SSE2): the check runs over every byte loaded, so this is visible in a load
// from a warm page cache.
#if defined(__x86_64__) && defined(__GNUC__)
[[gnu::target("avx2")]] std::int64_t count_nan_avx2(const void* data, SafetensorsDtype dtype,
                                                    std::int64_t count) {
  return count_nan_inline(data, dtype, count);
}
#endif

}  // namespace

std::int64_t count_nan(const void* data, SafetensorsDtype dtype, std::int64_t count) {
#if defined(__x86_64__) && defined(__GNUC__)
  static const bool has_avx2 = __builtin_cpu_supports("avx2");
  if (has_avx2) return count_nan_avx2(data, dtype, count);
#endif
  return count_nan_inline(data, dtype, count);
}

std::optional<c10::ScalarType> scalar_type_of(SafetensorsDtype dtype) {
  switch (dtype) {
    case SafetensorsDtype::kBool:
      return c10::ScalarType::Bool;
    case SafetensorsDtype::kUInt8:
      return c10::ScalarType::Byte;
    case SafetensorsDtype::kInt8:
      return c10::ScalarType::Char;
    case SafetensorsDtype::kInt16:
      return c10::ScalarType::Short;
    case SafetensorsDtype::kFloat16:
      return c10::ScalarType::Half;
    case SafetensorsDtype::kBFloat16:
      return c10::ScalarType::BFloat16;
    case SafetensorsDtype::kInt32:
      return c10::ScalarType::Int;
    case SafetensorsDtype::kFloat32:
      return c10::ScalarType::Float;
    case SafetensorsDtype::kFloat64:
      return c10::ScalarType::Double;
    case SafetensorsDtype::kInt64:
      return c10::ScalarType::Long;
    default:
      return std::nullopt;
  }
}

SafetensorsDtype safetensors_dtype_of(c10::ScalarType type) {
  switch (type) {
    case c10::ScalarType::Bool:
      return SafetensorsDtype::kBool;
    case c10::ScalarType::Byte:
      return SafetensorsDtype::kUInt8;
    case c10::ScalarType::Char:
      return SafetensorsDtype::kInt8;
    case c10::ScalarType::Short:
      return SafetensorsDtype::kInt16;
    case c10::ScalarType::Half:
      return SafetensorsDtype::kFloat16;
    case c10::ScalarType::BFloat16:
      return SafetensorsDtype::kBFloat16;
    case c10::ScalarType::Int:
      return SafetensorsDtype::kInt32;
    case c10::ScalarType::Float:
      return SafetensorsDtype::kFloat32;
    case c10::ScalarType::Double:
      return SafetensorsDtype::kFloat64;
    case c10::ScalarType::Long:
      return SafetensorsDtype::kInt64;
    default:
      throw CheckpointError(std::string("no safetensors dtype for torch type ") +
                            c10::toString(type));
  }
}

bool is_supported_conversion(SafetensorsDtype source, c10::ScalarType destination) {
  const auto source_type = scalar_type_of(source);
  if (source_type && *source_type == destination) return true;
  return is_floating_point(source) && c10::isFloatingType(destination);
}

void convert_elements(const void* source, SafetensorsDtype source_dtype, void* destination,
                      c10::ScalarType destination_type, std::int64_t count) {
  if (!is_supported_conversion(source_dtype, destination_type)) {
    throw CheckpointError(std::string("cannot convert ") + std::string(dtype_name(source_dtype)) +
                          " to " + c10::toString(destination_type));
  }
  if (count == 0) return;
  const auto source_type = scalar_type_of(source_dtype);
  if (source_type && *source_type == destination_type) {
    std::memcpy(destination, source, static_cast<std::size_t>(count * dtype_size(source_dtype)));
    return;
  }
  const auto output =
      at::from_blob(destination, {count}, at::TensorOptions().dtype(destination_type));
  if (source_type) {
    // const_cast: from_blob wants a mutable pointer; the tensor is only read.
    output.copy_(
        at::from_blob(const_cast<void*>(source), {count}, at::TensorOptions().dtype(*source_type)));
    return;
  }
  const auto& table = source_dtype == SafetensorsDtype::kFloat8E4M3
                          ? decode_table<decode_float8_e4m3fn>()
                          : decode_table<decode_float8_e5m2>();
  const auto* bytes = static_cast<const std::uint8_t*>(source);
  if (destination_type == c10::ScalarType::Float) {
    auto* values = static_cast<float*>(destination);
    for (std::int64_t i = 0; i < count; ++i) values[i] = table[bytes[i]];
    return;
  }
  auto decoded = at::empty({count}, at::kFloat);
  auto* values = decoded.data_ptr<float>();
  for (std::int64_t i = 0; i < count; ++i) values[i] = table[bytes[i]];
  output.copy_(decoded);
}

}  // namespace fsdp::checkpoint
