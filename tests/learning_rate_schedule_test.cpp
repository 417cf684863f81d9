#include "fsdp/stages/learning_rate_schedule.h"

#include <gtest/gtest.h>

namespace fsdp::stages {
namespace {

TEST(LearningRateSchedule, WarmsUpLinearlyThenDecaysAlongACosine) {
  const LearningRateSchedule schedule{1e-3, 1e-4, 10, 110};
  EXPECT_DOUBLE_EQ(schedule.at(1), 1e-4);
  EXPECT_DOUBLE_EQ(schedule.at(5), 5e-4);
  EXPECT_DOUBLE_EQ(schedule.at(10), 1e-3);
  EXPECT_DOUBLE_EQ(schedule.at(60), 1e-4 + 0.9e-3 * 0.5);  // half way: cos(pi / 2) = 0
  EXPECT_DOUBLE_EQ(schedule.at(110), 1e-4);
  EXPECT_DOUBLE_EQ(schedule.at(500), 1e-4);  // after the end: the floor
  for (std::int64_t step = 11; step < 110; ++step) {
    EXPECT_LT(schedule.at(step + 1), schedule.at(step)) << step;
  }
}

TEST(LearningRateSchedule, ConstantWithoutWarmupOrDecayRange) {
  const LearningRateSchedule flat{2e-3, 2e-3, 0, 1};
  EXPECT_DOUBLE_EQ(flat.at(1), 2e-3);
  EXPECT_DOUBLE_EQ(flat.at(1000), 2e-3);
}

TEST(LearningRateSchedule, RejectsNonsense) {
  EXPECT_THROW(LearningRateSchedule{}.at(0), std::invalid_argument);
  EXPECT_THROW((LearningRateSchedule{1e-3, 1e-2, 0, 10}.at(1)), std::invalid_argument);
  EXPECT_THROW((LearningRateSchedule{1e-3, 0, -1, 10}.at(1)), std::invalid_argument);
}

}  // namespace
}  // namespace fsdp::stages
