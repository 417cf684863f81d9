// World-size-independent initialisation, checked with the layout alone: the
// shards of every world size assemble into the same parameters.
#include "fsdp/initializer.h"

#include <gtest/gtest.h>

#include <cmath>
#include <numeric>

#include "fsdp/flat_layout.h"

namespace fsdp {
namespace {

TEST(Initializer, ValuesDependOnSeedNameAndIndexOnly) {
  const ParameterInit init = ParameterInit::normal(0.0, 1.0);
  const std::uint64_t key = parameter_stream_key(7, "decoder.0.mlp.router.weight");
  EXPECT_EQ(key, parameter_stream_key(7, "decoder.0.mlp.router.weight"));
  EXPECT_NE(key, parameter_stream_key(8, "decoder.0.mlp.router.weight"));
  EXPECT_NE(key, parameter_stream_key(7, "decoder.1.mlp.router.weight"));
  // Element-wise: generating a range equals generating each element alone, in any order.
  std::vector<double> range(100);
  fill_initial_values(init, key, 1000, 100, range.data());
  for (std::int64_t i = 99; i >= 0; --i) {
    ASSERT_EQ(range[static_cast<std::size_t>(i)], initial_value(init, key, 1000 + i));
  }
  EXPECT_NE(initial_value(init, key, 0), initial_value(init, key, 1));
}

// Tolerances: with n = 200000 samples the standard error of the mean is
// 1/sqrt(n) = 0.0022 and that of the standard deviation about 0.0016; 0.015
// is more than 6 standard errors, so the test fails only on a real defect.
TEST(Initializer, NormalAndUniformHaveTheirDistributions) {
  const std::int64_t n = 200000;
  std::vector<double> values(n);
  fill_initial_values(ParameterInit::normal(2.0, 3.0), parameter_stream_key(1, "w"), 0, n,
                      values.data());
  const double mean = std::accumulate(values.begin(), values.end(), 0.0) / n;
  double squares = 0;
  for (double v : values) squares += (v - mean) * (v - mean);
  EXPECT_NEAR(mean, 2.0, 3.0 * 0.015);
  EXPECT_NEAR(std::sqrt(squares / (n - 1)), 3.0, 3.0 * 0.015);

  fill_initial_values(ParameterInit::uniform(-0.5, 1.5), parameter_stream_key(1, "u"), 0, n,
                      values.data());
  double low = values[0], high = values[0], sum = 0;
  for (double v : values) {
    low = std::min(low, v);
    high = std::max(high, v);
    sum += v;
  }
  EXPECT_GE(low, -0.5);
  EXPECT_LT(high, 1.5);
  EXPECT_NEAR(sum / n, 0.5, 2.0 * 0.015);
  EXPECT_EQ(initial_value(ParameterInit::constant(0.25), 0, 12), 0.25);
  EXPECT_EQ(initial_value(ParameterInit::zeros(), 0, 12), 0.0);
}

TEST(Initializer, EveryWorldSizeAssemblesTheSameParameters) {
  const std::vector<ParameterSpec> specs = {
      {"embedding", {50, 8}, ElementType::kFloat32, ParameterInit::normal(0, 0.02)},
      {"norm", {8}, ElementType::kFloat32, ParameterInit::constant(1.0)},
      {"router", {4, 8}, ElementType::kFloat32, ParameterInit::uniform(-0.1, 0.1)}};
  auto assemble = [&](int world_size) {
    const FlatLayout layout(specs, world_size, 4);
    std::vector<double> full(static_cast<std::size_t>(layout.unpadded_numel()), NAN);
    for (int rank = 0; rank < world_size; ++rank) {
      for (const OwnedSlice& slice : layout.owned_slices(rank)) {
        const ParameterSlot& slot = layout.parameters()[slice.parameter_index];
        fill_initial_values(slot.init, parameter_stream_key(42, slot.name),
                            slice.parameter_range.begin, slice.parameter_range.size(),
                            full.data() + slot.flat_range.begin + slice.parameter_range.begin);
      }
    }
    return full;
  };
  const std::vector<double> reference = assemble(1);
  for (double v : reference) ASSERT_FALSE(std::isnan(v));
  for (int world_size = 2; world_size <= 8; ++world_size) {
    EXPECT_EQ(assemble(world_size), reference) << "world size " << world_size;
  }
}

TEST(Initializer, DescribesItself) {
  EXPECT_EQ(describe(ParameterInit::normal(0, 0.02)), "normal(0, 0.02)");
  EXPECT_EQ(describe(ParameterInit::zeros()), "zeros");
}

}  // namespace
}  // namespace fsdp
