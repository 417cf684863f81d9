// The device AdamW: the same float32 operations as adamw_host.cpp, one thread
// per element in a grid-stride loop.
#include <cuda_runtime_api.h>

#include <cmath>
#include <stdexcept>
#include <string>

#include "fsdp/kernels/adamw.h"

namespace fsdp::kernels {
namespace {

struct AdamWScalars {
  float decay;
  float beta1;
  float one_minus_beta1;
  float beta2;
  float one_minus_beta2;
  float sqrt_bias_correction2;
  float epsilon;
  float negative_step_size;
  float gradient_scale;
};

__global__ void adamw_kernel(float* __restrict__ w, const float* __restrict__ g,
                             float* __restrict__ m, float* __restrict__ v, std::int64_t count,
                             AdamWScalars s) {
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < count;
       i += stride) {
    const float weight = __fmul_rn(w[i], s.decay);  // decay is exactly 1 without weight decay
    const float gradient = __fmul_rn(g[i], s.gradient_scale);
    const float average =
        __fadd_rn(__fmul_rn(m[i], s.beta1), __fmul_rn(s.one_minus_beta1, gradient));
    const float average_sq = __fadd_rn(__fmul_rn(v[i], s.beta2),
                                       __fmul_rn(__fmul_rn(s.one_minus_beta2, gradient), gradient));
    const float denominator =
        __fadd_rn(__fdiv_rn(__fsqrt_rn(average_sq), s.sqrt_bias_correction2), s.epsilon);
    m[i] = average;
    v[i] = average_sq;
    w[i] = __fadd_rn(weight, __fdiv_rn(__fmul_rn(s.negative_step_size, average), denominator));
  }
}

// Makes the device holding `pointer` current for the guard's life: the
// kernel runs where its arrays are, whatever device the caller had current.
class PointerDeviceGuard {
 public:
  explicit PointerDeviceGuard(const void* pointer) {
    cudaPointerAttributes attributes{};
    check(cudaPointerGetAttributes(&attributes, pointer), "cudaPointerGetAttributes");
    if (attributes.type != cudaMemoryTypeDevice && attributes.type != cudaMemoryTypeManaged) {
      throw std::invalid_argument("adamw_step_on_device: the weights are not in device memory");
    }
    check(cudaGetDevice(&previous_), "cudaGetDevice");
    if (attributes.device != previous_) check(cudaSetDevice(attributes.device), "cudaSetDevice");
  }
  ~PointerDeviceGuard() { cudaSetDevice(previous_); }
  PointerDeviceGuard(const PointerDeviceGuard&) = delete;
  PointerDeviceGuard& operator=(const PointerDeviceGuard&) = delete;

 private:
  static void check(cudaError_t status, const char* call) {
    if (status != cudaSuccess) {
      throw std::runtime_error(std::string("adamw_step_on_device: ") + call +
                               " failed: " + cudaGetErrorString(status));
    }
  }
  int previous_ = 0;
};

}  // namespace

void adamw_step_on_device(const AdamWArrays& arrays, const AdamWHyperparameters& hyper,
                          std::int64_t step, double weight_decay, float gradient_scale,
                          void* cuda_stream) {
  if (step < 1) {
    throw std::invalid_argument("adamw: step must count from 1, got " + std::to_string(step));
  }
  if (arrays.count <= 0) return;
  AdamWScalars s;
  s.decay =
      weight_decay != 0.0 ? static_cast<float>(1.0 - hyper.learning_rate * weight_decay) : 1.0f;
  s.beta1 = static_cast<float>(hyper.beta1);
  s.one_minus_beta1 = static_cast<float>(1.0 - hyper.beta1);
  s.beta2 = static_cast<float>(hyper.beta2);
  s.one_minus_beta2 = static_cast<float>(1.0 - hyper.beta2);
  s.sqrt_bias_correction2 =
      static_cast<float>(std::sqrt(1.0 - std::pow(hyper.beta2, static_cast<double>(step))));
  s.epsilon = static_cast<float>(hyper.epsilon);
  s.negative_step_size = static_cast<float>(
      -(hyper.learning_rate / (1.0 - std::pow(hyper.beta1, static_cast<double>(step)))));
  s.gradient_scale = gradient_scale;
  const PointerDeviceGuard device(arrays.weights);
  constexpr int kThreads = 256;
  const std::int64_t wanted = (arrays.count + kThreads - 1) / kThreads;
  const int blocks = static_cast<int>(wanted < 8192 ? wanted : 8192);
  adamw_kernel<<<blocks, kThreads, 0, static_cast<cudaStream_t>(cuda_stream)>>>(
      arrays.weights, arrays.gradients, arrays.exp_avg, arrays.exp_avg_sq, arrays.count, s);
  const cudaError_t status = cudaGetLastError();
  if (status != cudaSuccess) {
    throw std::runtime_error(std::string("adamw_step_on_device: launch failed: ") +
                             cudaGetErrorString(status));
  }
}

}  // namespace fsdp::kernels
