// Host casts agree bit for bit with libtorch's own conversions, on values
// chosen to exercise rounding: ties, subnormals, overflow, NaN, signed zero.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "fsdp/kernels/cast.h"

namespace fsdp::kernels {
namespace {

at::Tensor tricky_float32_values() {
  std::vector<float> values = {0.0f,
                               -0.0f,
                               1.0f,
                               -1.0f,
                               1.0f + 1.0f / 256,
                               1.0f + 3.0f / 512,
                               65504.0f,
                               65520.0f,
                               1e38f,
                               -1e38f,
                               3.4e38f,
                               1e-40f,
                               -1e-45f,
                               6e-8f,
                               std::numeric_limits<float>::infinity(),
                               -std::numeric_limits<float>::infinity(),
                               std::numeric_limits<float>::quiet_NaN()};
  at::Tensor random = at::randn({4096}, at::TensorOptions().dtype(at::kFloat)).mul(1000);
  return at::cat({at::tensor(values), random});
}

at::Tensor cast_with_kernel(const at::Tensor& source, c10::ScalarType to, ElementType from_type,
                            ElementType to_type) {
  at::Tensor destination = at::empty(source.sizes(), source.options().dtype(to));
  cast_on_host(source.data_ptr(), from_type, destination.data_ptr(), to_type, source.numel());
  return destination;
}

// Bitwise equality, except that two NaNs are equal whatever their payloads:
// torch's vectorised conversion turns a quiet NaN into 0xFFFF, c10's scalar one
// (which the host cast uses) into 0x7FC0; both are the same NaN to every consumer.
bool same_bits(const at::Tensor& a, const at::Tensor& b) {
  if (a.scalar_type() != b.scalar_type() || a.numel() != b.numel()) return false;
  const at::Tensor a_nan = a.isnan();
  if (!a_nan.equal(b.isnan())) return false;
  const at::Tensor keep = a_nan.logical_not();
  const at::Tensor a_kept = a.masked_select(keep).contiguous();
  const at::Tensor b_kept = b.masked_select(keep).contiguous();
  return std::memcmp(a_kept.data_ptr(), b_kept.data_ptr(),
                     a_kept.numel() * a_kept.element_size()) == 0;
}

TEST(CastOnHost, Float32ToSixteenBitMatchesTorchBitForBit) {
  at::manual_seed(1);
  const at::Tensor values = tricky_float32_values();
  EXPECT_TRUE(same_bits(
      cast_with_kernel(values, at::kBFloat16, ElementType::kFloat32, ElementType::kBFloat16),
      values.to(at::kBFloat16)));
  EXPECT_TRUE(
      same_bits(cast_with_kernel(values, at::kHalf, ElementType::kFloat32, ElementType::kFloat16),
                values.to(at::kHalf)));
}

TEST(CastOnHost, SixteenBitToFloat32IsExactAndBetweenSixteenBitTypesGoesThroughFloat32) {
  at::manual_seed(2);
  const at::Tensor bf16 = tricky_float32_values().to(at::kBFloat16);
  const at::Tensor half = tricky_float32_values().to(at::kHalf);
  EXPECT_TRUE(
      same_bits(cast_with_kernel(bf16, at::kFloat, ElementType::kBFloat16, ElementType::kFloat32),
                bf16.to(at::kFloat)));
  EXPECT_TRUE(
      same_bits(cast_with_kernel(half, at::kFloat, ElementType::kFloat16, ElementType::kFloat32),
                half.to(at::kFloat)));
  EXPECT_TRUE(
      same_bits(cast_with_kernel(bf16, at::kHalf, ElementType::kBFloat16, ElementType::kFloat16),
                bf16.to(at::kFloat).to(at::kHalf)));
}

TEST(CastOnHost, SameTypeCopiesAndUnsupportedPairsAreRefused) {
  std::vector<std::int32_t> source = {1, 2, 3};
  std::vector<std::int32_t> destination(3, 0);
  cast_on_host(source.data(), ElementType::kInt32, destination.data(), ElementType::kInt32, 3);
  EXPECT_EQ(destination, source);
  EXPECT_FALSE(is_supported_cast(ElementType::kInt32, ElementType::kFloat32));
  try {
    cast_on_host(source.data(), ElementType::kInt32, destination.data(), ElementType::kFloat32, 3);
    ADD_FAILURE() << "int32 -> float32 was accepted";
  } catch (const std::invalid_argument& error) {
    EXPECT_NE(std::string(error.what()).find("int32 to float32"), std::string::npos)
        << error.what();
  }
}

TEST(DivideOnHost, IsOneCorrectlyRoundedDivisionPerElement) {
  std::vector<float> values = {1.0f, 10.0f, 7.0f, -3.0f};
  divide_on_host(values.data(), ElementType::kFloat32, 4, 3.0);
  EXPECT_EQ(values, (std::vector<float>{1.0f / 3.0f, 10.0f / 3.0f, 7.0f / 3.0f, -1.0f}));
  EXPECT_THROW(divide_on_host(values.data(), ElementType::kBFloat16, 4, 3.0),
               std::invalid_argument);
}

// Runs without a GPU: the argument checks come before any CUDA call. The
// kernels themselves are checked against the host casts by gpu_test.
TEST(CastOnDevice, RefusesClearlyWhatItCannotDo) {
  float value = 1.0f;
  std::uint16_t word = 0;
  try {
    if (cuda_kernels_available()) {
      cast_on_device(&value, ElementType::kInt32, &word, ElementType::kBFloat16, 1, nullptr);
    } else {
      cast_on_device(&value, ElementType::kFloat32, &word, ElementType::kBFloat16, 1, nullptr);
    }
    ADD_FAILURE() << "cast_on_device accepted a call it cannot serve";
  } catch (const std::invalid_argument& error) {
    EXPECT_TRUE(cuda_kernels_available());
    EXPECT_NE(std::string(error.what()).find("int32 to bfloat16"), std::string::npos)
        << error.what();
  } catch (const std::runtime_error& error) {
    EXPECT_FALSE(cuda_kernels_available());
    EXPECT_NE(std::string(error.what()).find("no CUDA"), std::string::npos) << error.what();
  }
}

}  // namespace
}  // namespace fsdp::kernels
