// One pass over the four arrays, written as a plain loop the compiler
// vectorises (no aliasing between the arrays, no branches; this file is built
// with -fno-math-errno, without which std::sqrt's errno contract blocks
// vectorisation), split into OpenMP chunks. Scalars are rounded to float32 once, up front, exactly
// where torch rounds them, so results match torch::optim::AdamW.
#include <cmath>
#include <stdexcept>
#include <string>

#include "fsdp/kernels/adamw.h"

namespace fsdp::kernels {

void adamw_step_on_host(const AdamWArrays& arrays, const AdamWHyperparameters& hyper,
                        std::int64_t step, double weight_decay, float gradient_scale) {
  if (step < 1) {
    throw std::invalid_argument("adamw: step must count from 1, got " + std::to_string(step));
  }
  // Without decay torch skips the multiplication; multiplying by 1 is exact, so
  // doing it anyway gives the same bits and keeps the loop branch-free.
  const float decay =
      weight_decay != 0.0 ? static_cast<float>(1.0 - hyper.learning_rate * weight_decay) : 1.0f;
  const float beta1 = static_cast<float>(hyper.beta1);
  const float one_minus_beta1 = static_cast<float>(1.0 - hyper.beta1);
  const float beta2 = static_cast<float>(hyper.beta2);
  const float one_minus_beta2 = static_cast<float>(1.0 - hyper.beta2);
  const double bias_correction1 = 1.0 - std::pow(hyper.beta1, static_cast<double>(step));
  const double bias_correction2 = 1.0 - std::pow(hyper.beta2, static_cast<double>(step));
  const float sqrt_bias_correction2 = static_cast<float>(std::sqrt(bias_correction2));
  const float epsilon = static_cast<float>(hyper.epsilon);
  const float negative_step_size = static_cast<float>(-(hyper.learning_rate / bias_correction1));

  float* __restrict__ w = arrays.weights;
  const float* __restrict__ g = arrays.gradients;
  float* __restrict__ m = arrays.exp_avg;
  float* __restrict__ v = arrays.exp_avg_sq;
  const std::int64_t count = arrays.count;
#pragma omp parallel for schedule(static) if (count > (1 << 16))
  for (std::int64_t i = 0; i < count; ++i) {
    const float weight = w[i] * decay;
    const float gradient = g[i] * gradient_scale;
    const float average = m[i] * beta1 + one_minus_beta1 * gradient;
    const float average_sq = v[i] * beta2 + one_minus_beta2 * gradient * gradient;
    const float denominator = std::sqrt(average_sq) / sqrt_bias_correction2 + epsilon;
    m[i] = average;
    v[i] = average_sq;
    w[i] = weight + negative_step_size * average / denominator;
  }
}

double squared_norm_on_host(const float* values, std::int64_t count) {
  double sum = 0.0;
#pragma omp parallel for schedule(static) reduction(+ : sum) if (count > (1 << 16))
  for (std::int64_t i = 0; i < count; ++i) {
    const double value = values[i];
    sum += value * value;
  }
  return sum;
}

}  // namespace fsdp::kernels
