// Converting elements as they come off disk into the dtype of a shard.
#pragma once

#include <c10/core/ScalarType.h>

#include <cstdint>
#include <optional>

#include "fsdp/checkpoint/safetensors_format.h"

namespace fsdp::checkpoint {

// The torch type of a safetensors dtype, where libtorch has one (not for
// U16/U32/U64, nor the float8 types on libtorch 1.13).
std::optional<c10::ScalarType> scalar_type_of(SafetensorsDtype dtype);
// The safetensors dtype of a torch type; throws CheckpointError for one without.
SafetensorsDtype safetensors_dtype_of(c10::ScalarType type);

// True when convert_elements() can turn `source` into `destination`: any
// floating dtype (float8 included) into a floating torch type, and any type into itself.
bool is_supported_conversion(SafetensorsDtype source, c10::ScalarType destination);

// Converts `count` little-endian elements at `source` into `destination`, in
// host memory. Rounds to nearest even, as torch's copy does; float8 values
// decode exactly. REQUIRES: is_supported_conversion (throws CheckpointError otherwise).
void convert_elements(const void* source, SafetensorsDtype source_dtype, void* destination,
                      c10::ScalarType destination_type, std::int64_t count);

// The NaNs among `count` little-endian elements at `data`, read from their
// bits (0 for integer dtypes). Vectorised: meant to run over data just read,
// while it is still in cache.
std::int64_t count_nan(const void* data, SafetensorsDtype dtype, std::int64_t count);

}  // namespace fsdp::checkpoint
