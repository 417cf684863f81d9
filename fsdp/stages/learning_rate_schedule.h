// Learning-rate schedule: linear warm-up, then cosine decay to a floor.
#pragma once

#include <cstdint>

namespace fsdp::stages {

struct LearningRateSchedule {
  double peak = 1e-3;
  double minimum = 0.0;
  std::int64_t warmup_steps = 0;
  std::int64_t total_steps = 1;

  // The learning rate of step `step`, counting from 1:
  //   step <= warmup_steps:  peak * step / warmup_steps
  //   afterwards:            minimum + (peak - minimum) * (1 + cos(pi * progress)) / 2,
  //                          progress = (step - warmup) / (total - warmup), clamped to [0, 1].
  // Throws std::invalid_argument for step < 1 or an inconsistent schedule.
  double at(std::int64_t step) const;
};

}  // namespace fsdp::stages
