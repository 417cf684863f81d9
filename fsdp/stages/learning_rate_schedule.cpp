#include "fsdp/stages/learning_rate_schedule.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>

namespace fsdp::stages {

double LearningRateSchedule::at(std::int64_t step) const {
  if (step < 1) {
    throw std::invalid_argument("learning-rate schedule: steps count from 1, got " +
                                std::to_string(step));
  }
  if (warmup_steps < 0 || total_steps < 1 || !(peak >= minimum) || minimum < 0) {
    throw std::invalid_argument(
        "learning-rate schedule: expected 0 <= minimum <= peak, warmup >= 0 and total >= 1, got "
        "peak " +
        std::to_string(peak) + ", minimum " + std::to_string(minimum) + ", warmup " +
        std::to_string(warmup_steps) + ", total " + std::to_string(total_steps));
  }
  if (step <= warmup_steps) {
    return peak * static_cast<double>(step) / static_cast<double>(warmup_steps);
  }
  const std::int64_t decay_steps = std::max<std::int64_t>(1, total_steps - warmup_steps);
  const double progress = std::clamp(
      static_cast<double>(step - warmup_steps) / static_cast<double>(decay_steps), 0.0, 1.0);
  return minimum + (peak - minimum) * 0.5 * (1.0 + std::cos(M_PI * progress));
}

}  // namespace fsdp::stages
