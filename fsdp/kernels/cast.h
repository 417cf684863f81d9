// Element-type conversion over flat arrays, on the host and on CUDA devices.
//
// Used where the runtime must change precision without a tensor library in
// the way: the process groups sum 16-bit floats through float32 (a sum rounded
// to 16 bits at every step loses the low-order gradient bits), and the device
// path does the same on the communication stream.
//
// Conversions round to nearest, ties to even; NaN stays NaN; float32 values
// beyond a 16-bit type's range become infinities, as in PyTorch.
#pragma once

#include <cstdint>

#include "fsdp/element_type.h"

namespace fsdp::kernels {

// True when `cast_on_host` / `cast_on_device` support this pair: any pair of
// float32, bfloat16 and float16, and any type to itself.
bool is_supported_cast(ElementType source_type, ElementType destination_type);

// Converts `count` elements. `source` and `destination` must not overlap
// unless they are the same pointer with the same type (then it does nothing).
// Throws std::invalid_argument for an unsupported pair.
void cast_on_host(const void* source, ElementType source_type, void* destination,
                  ElementType destination_type, std::int64_t count);

// Divides `count` float32 or float64 elements by `divisor` in place (each
// quotient correctly rounded, so results equal a division done elsewhere).
void divide_on_host(void* values, ElementType type, std::int64_t count, double divisor);

// True when the library was compiled with CUDA kernels.
bool cuda_kernels_available();

// Device versions: enqueue on `cuda_stream` (a cudaStream_t, passed opaquely so
// that this header needs no CUDA headers). Throw std::runtime_error when the
// library was built without CUDA.
void cast_on_device(const void* source, ElementType source_type, void* destination,
                    ElementType destination_type, std::int64_t count, void* cuda_stream);

}  // namespace fsdp::kernels
