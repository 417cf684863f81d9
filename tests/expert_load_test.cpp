// The expert-load figure fsdp-train reports (fsdp/launch/expert_load.h).
#include <gtest/gtest.h>

#include <ATen/ATen.h>

#include "fsdp/launch/expert_load.h"

namespace fsdp::launch {
namespace {

TEST(ExpertLoad, WorstAndMeanOverLayers) {
  // Layer 0 perfectly even; layer 1 sends half of its tokens to one of 4 experts.
  const std::vector<double> counts = {10, 10, 10, 10, 20, 10, 5, 5};
  const Imbalance load = expert_imbalance(counts, 4);
  EXPECT_DOUBLE_EQ(load.worst, 2.0);
  EXPECT_DOUBLE_EQ(load.mean, 1.5);
  // A layer that received no tokens says nothing; none at all gives 0.
  EXPECT_DOUBLE_EQ(expert_imbalance({0, 0, 0, 0, 20, 10, 5, 5}, 4).mean, 2.0);
  EXPECT_DOUBLE_EQ(expert_imbalance({0, 0}, 2).worst, 0.0);
  EXPECT_DOUBLE_EQ(expert_imbalance({}, 0).worst, 0.0);
}

TEST(ExpertLoad, WindowSumsEachLayerOverItsSteps) {
  ExpertLoadWindow window(2);
  window.add({30, 10}, 2);  // dropped: the window holds the last two steps
  window.add({10, 30}, 2);
  window.add({30, 10}, 2);
  EXPECT_EQ(window.steps(), 2u);
  // (10 + 30, 30 + 10): even over the window, though each step was 1.5.
  EXPECT_DOUBLE_EQ(window.imbalance().worst, 1.0);
}

TEST(ExpertLoad, FlattensStackedLayersIntoRows) {
  stages::AuxiliaryTotals totals;
  totals.expert_tokens.emplace_back(1, at::tensor({1.0, 2.0, 3.0}, at::kDouble));
  totals.expert_tokens.emplace_back(
      2, at::tensor({4.0, 5.0, 6.0, 7.0, 8.0, 9.0}, at::kDouble).view({2, 3}));
  std::size_t experts = 0;
  EXPECT_EQ(flatten_expert_tokens(totals, experts),
            (std::vector<double>{1, 2, 3, 4, 5, 6, 7, 8, 9}));
  EXPECT_EQ(experts, 3u);
}

}  // namespace
}  // namespace fsdp::launch
