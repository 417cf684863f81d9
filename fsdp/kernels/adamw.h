// AdamW over flat float32 arrays: one fused pass over a range of the weight,
// gradient, exp_avg and exp_avg_sq shards, and the squared norm used for
// global gradient-norm clipping. Host and CUDA implementations.
//
// The update is torch.optim.AdamW's (decoupled weight decay, bias-corrected
// moments, no amsgrad), with the same float32 operations in the same order, so
// it matches torch::optim::AdamW on the same values to float32 rounding:
//   w  *= 1 - lr * weight_decay
//   g'  = g * gradient_scale                      (1 unless clipping)
//   m   = m * beta1 + (1 - beta1) * g'
//   v   = v * beta2 + (1 - beta2) * g' * g'
//   w  += -(lr / (1 - beta1^step)) * m / (sqrt(v) / sqrt(1 - beta2^step) + eps)
#pragma once

#include <cstdint>

namespace fsdp::kernels {

struct AdamWHyperparameters {
  double learning_rate = 1e-3;
  double beta1 = 0.9;
  double beta2 = 0.999;
  double epsilon = 1e-8;
};

// The four shards of one range, `count` elements each, not overlapping.
struct AdamWArrays {
  float* weights;
  const float* gradients;
  float* exp_avg;
  float* exp_avg_sq;
  std::int64_t count;
};

// REQUIRES: step >= 1 (the step being taken, counting from 1, as torch does).
// Throws std::invalid_argument otherwise. Parallel over chunks with OpenMP.
void adamw_step_on_host(const AdamWArrays& arrays, const AdamWHyperparameters& hyper,
                        std::int64_t step, double weight_decay, float gradient_scale = 1.0f);

// Sum of squares of `count` floats, accumulated in float64.
double squared_norm_on_host(const float* values, std::int64_t count);

// Device versions, enqueued on `cuda_stream` (a cudaStream_t), on the device
// holding the arrays (whichever is current). Throw
// std::runtime_error when the library was built without CUDA.
void adamw_step_on_device(const AdamWArrays& arrays, const AdamWHyperparameters& hyper,
                          std::int64_t step, double weight_decay, float gradient_scale,
                          void* cuda_stream);

}  // namespace fsdp::kernels
