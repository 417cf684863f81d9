// Merging per-rank statistics gives the statistics of the whole, however the
// values were split.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>

#include "fsdp/inspector.h"

namespace fsdp {
namespace {

TEST(Statistics, MergeOfAnySplitEqualsTheWhole) {
  at::manual_seed(3);
  const at::Tensor values = at::randn({1000}, at::kDouble).mul(5).add(2);
  const ParameterStatistics whole = merge_statistics({partial_statistics(values)});
  EXPECT_NEAR(whole.mean, values.mean().item<double>(), 1e-12);
  EXPECT_NEAR(whole.std, values.std().item<double>(), 1e-12);
  for (std::vector<std::int64_t> cuts : {std::vector<std::int64_t>{0, 1000},
                                         {0, 1, 999, 1000},
                                         {0, 0, 500, 500, 1000},
                                         {0, 333, 666, 1000}}) {
    std::vector<PartialStatistics> parts;
    for (std::size_t k = 0; k + 1 < cuts.size(); ++k) {
      parts.push_back(partial_statistics(values.narrow(0, cuts[k], cuts[k + 1] - cuts[k])));
    }
    const ParameterStatistics merged = merge_statistics(parts);
    EXPECT_EQ(merged.numel, 1000);
    EXPECT_EQ(merged.min, whole.min);
    EXPECT_EQ(merged.max, whole.max);
    EXPECT_EQ(merged.abs_max, whole.abs_max);
    EXPECT_NEAR(merged.sum, whole.sum, 1e-9);
    EXPECT_NEAR(merged.mean, whole.mean, 1e-12);
    EXPECT_NEAR(merged.std, whole.std, 1e-12);
  }
}

TEST(Statistics, NaNsAreCountedAndLeftOutOfTheRest) {
  const at::Tensor values = at::tensor({1.0, NAN, 3.0, INFINITY, 0.0, -2.0}, at::kDouble);
  const ParameterStatistics stats = merge_statistics({partial_statistics(values)});
  EXPECT_EQ(stats.numel, 6);
  EXPECT_EQ(stats.nan_count, 1);
  EXPECT_EQ(stats.inf_count, 1);
  EXPECT_EQ(stats.nonzero_count, 5);
  EXPECT_EQ(stats.min, -2.0);
  EXPECT_EQ(stats.max, INFINITY);
  const ParameterStatistics all_nan = merge_statistics({partial_statistics(at::full({3}, NAN))});
  EXPECT_EQ(all_nan.nan_count, 3);
  EXPECT_TRUE(std::isnan(all_nan.mean));
  EXPECT_TRUE(std::isnan(all_nan.min));
}

TEST(Statistics, EmptyAndSingleValueParameters) {
  const ParameterStatistics empty = merge_statistics({partial_statistics(at::empty({0, 3}))});
  EXPECT_EQ(empty.numel, 0);
  EXPECT_TRUE(std::isnan(empty.mean));
  const ParameterStatistics one = merge_statistics({partial_statistics(at::full({1}, 4.0))});
  EXPECT_EQ(one.mean, 4.0);
  EXPECT_EQ(one.std, 0.0);
}

}  // namespace
}  // namespace fsdp
