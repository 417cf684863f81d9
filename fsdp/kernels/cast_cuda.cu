// Device conversions: one grid-stride kernel per type pair, enqueued on the
// caller's stream. cuda_bf16.h / cuda_fp16.h round to nearest even, like the
// host path and PyTorch.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include <stdexcept>
#include <string>

#include "fsdp/kernels/cast.h"

namespace fsdp::kernels {
namespace {

__device__ inline float to_float(float value) { return value; }
__device__ inline float to_float(__nv_bfloat16 value) { return __bfloat162float(value); }
__device__ inline float to_float(__half value) { return __half2float(value); }

template <typename T>
__device__ inline T from_float(float value);
template <>
__device__ inline float from_float<float>(float value) {
  return value;
}
template <>
__device__ inline __nv_bfloat16 from_float<__nv_bfloat16>(float value) {
  return __float2bfloat16_rn(value);
}
template <>
__device__ inline __half from_float<__half>(float value) {
  return __float2half_rn(value);
}

template <typename Source, typename Destination>
__global__ void convert_kernel(const Source* in, Destination* out, std::int64_t count) {
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < count;
       i += stride) {
    out[i] = from_float<Destination>(to_float(in[i]));
  }
}

void check_launch(const char* what) {
  const cudaError_t status = cudaGetLastError();
  if (status != cudaSuccess) {
    throw std::runtime_error(std::string("cast_on_device: launching ") + what +
                             " failed: " + cudaGetErrorString(status));
  }
}

template <typename Source, typename Destination>
void launch(const void* source, void* destination, std::int64_t count, cudaStream_t stream) {
  constexpr int kThreads = 256;
  // Enough blocks to fill a large GPU several times over; the grid-stride loop covers the rest.
  const std::int64_t wanted = (count + kThreads - 1) / kThreads;
  const int blocks = static_cast<int>(wanted < 8192 ? wanted : 8192);
  convert_kernel<Source, Destination><<<blocks, kThreads, 0, stream>>>(
      static_cast<const Source*>(source), static_cast<Destination*>(destination), count);
  check_launch("the conversion kernel");
}

template <typename Source>
void launch_from(const void* source, void* destination, ElementType destination_type,
                 std::int64_t count, cudaStream_t stream) {
  switch (destination_type) {
    case ElementType::kFloat32:
      return launch<Source, float>(source, destination, count, stream);
    case ElementType::kBFloat16:
      return launch<Source, __nv_bfloat16>(source, destination, count, stream);
    case ElementType::kFloat16:
      return launch<Source, __half>(source, destination, count, stream);
    default:
      throw std::logic_error("cast_on_device: unreachable destination type");
  }
}

}  // namespace

bool cuda_kernels_available() { return true; }

void cast_on_device(const void* source, ElementType source_type, void* destination,
                    ElementType destination_type, std::int64_t count, void* cuda_stream) {
  if (!is_supported_cast(source_type, destination_type)) {
    throw std::invalid_argument("cast_on_device: no conversion from " +
                                std::string(element_type_name(source_type)) + " to " +
                                std::string(element_type_name(destination_type)));
  }
  if (count <= 0) return;
  cudaStream_t stream = static_cast<cudaStream_t>(cuda_stream);
  if (source_type == destination_type) {
    if (source == destination) return;
    const cudaError_t status = cudaMemcpyAsync(
        destination, source, count * element_size(source_type), cudaMemcpyDeviceToDevice, stream);
    if (status != cudaSuccess) {
      throw std::runtime_error(std::string("cast_on_device: cudaMemcpyAsync failed: ") +
                               cudaGetErrorString(status));
    }
    return;
  }
  switch (source_type) {
    case ElementType::kFloat32:
      return launch_from<float>(source, destination, destination_type, count, stream);
    case ElementType::kBFloat16:
      return launch_from<__nv_bfloat16>(source, destination, destination_type, count, stream);
    case ElementType::kFloat16:
      return launch_from<__half>(source, destination, destination_type, count, stream);
    default:
      throw std::logic_error("cast_on_device: unreachable source type");
  }
}

}  // namespace fsdp::kernels
