// rms_norm against the expression it replaces, through autograd.
#include "fsdp/models/rms_norm.h"

#include <gtest/gtest.h>

#include <ATen/ATen.h>
#include <torch/csrc/autograd/autograd.h>

#include <stdexcept>
#include <string>

namespace fsdp::models {
namespace {

struct Outcome {
  at::Tensor output, input_gradient, weight_gradient;
};

Outcome run(bool fused, at::ScalarType type) {
  at::manual_seed(5);
  const at::Tensor x = at::randn({3, 5, 32}).mul(3).to(type).set_requires_grad(true);
  const at::Tensor weight = at::randn({32}).to(type).set_requires_grad(true);
  const at::Tensor output_gradient = at::randn({3, 5, 32}).to(type);
  const double epsilon = 1e-6;
  Outcome outcome;
  outcome.output = fused
                       ? rms_norm(x, weight, epsilon)
                       : x * at::rsqrt(x.square().mean({-1}, /*keepdim=*/true) + epsilon) * weight;
  torch::autograd::backward({outcome.output}, {output_gradient});
  outcome.input_gradient = x.grad();
  outcome.weight_gradient = weight.grad();
  return outcome;
}

TEST(RmsNorm, SameOutputAndGradientsAsTheExpression) {
  for (const at::ScalarType type : {at::kFloat, at::kBFloat16}) {
    SCOPED_TRACE(c10::toString(type));
    const Outcome expression = run(false, type);
    const Outcome fused = run(true, type);
    EXPECT_TRUE(fused.output.equal(expression.output));
    EXPECT_TRUE(fused.input_gradient.equal(expression.input_gradient));
    EXPECT_TRUE(fused.weight_gradient.equal(expression.weight_gradient));
    EXPECT_GT(expression.input_gradient.abs().sum().item<double>(), 0);
  }
}

TEST(RmsNorm, WithoutAGraphThePlainExpression) {
  const at::Tensor x = at::randn({4, 8});
  const at::Tensor weight = at::randn({8});
  const at::Tensor output = rms_norm(x, weight, 1e-5);
  EXPECT_FALSE(output.requires_grad());
  EXPECT_TRUE(output.equal(x * at::rsqrt(x.square().mean({-1}, true) + 1e-5) * weight));
}

TEST(RmsNorm, WrongShapesAreNamed) {
  try {
    rms_norm(at::randn({4, 8}), at::randn({6}), 1e-5);
    ADD_FAILURE() << "a weight of 6 for rows of 8 was accepted";
  } catch (const std::invalid_argument& error) {
    const std::string message = error.what();
    EXPECT_NE(message.find("x [4, 8] and weight [6]"), std::string::npos) << message;
  }
}

}  // namespace
}  // namespace fsdp::models
