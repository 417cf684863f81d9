// swiglu_down against the expression it replaces, through autograd.
#include "fsdp/models/swiglu.h"

#include <gtest/gtest.h>

#include <ATen/ATen.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/function.h>

#include <stdexcept>
#include <string>
#include <vector>

namespace fsdp::models {
namespace {

struct Outcome {
  at::Tensor output, gate_up_gradient, weight_gradient, bias_gradient;
};

// `fused`: swiglu_down; otherwise the expression autograd differentiates op by op.
Outcome run(bool fused, at::ScalarType type, bool bias) {
  at::manual_seed(11);
  const std::int64_t hidden = 24, intermediate = 40;
  const at::Tensor gate_up =
      at::randn({3, 5, 2 * intermediate}).mul(2).to(type).set_requires_grad(true);
  const at::Tensor weight =
      at::randn({hidden, intermediate}).mul(0.2).to(type).set_requires_grad(true);
  const at::Tensor down_bias =
      bias ? at::randn({hidden}).to(type).set_requires_grad(true) : at::Tensor();
  const at::Tensor output_gradient = at::randn({3, 5, hidden}).to(type);
  Outcome outcome;
  if (fused) {
    outcome.output = swiglu_down(gate_up, weight, down_bias);
  } else {
    const std::vector<at::Tensor> halves = gate_up.chunk(2, -1);
    outcome.output = at::linear(at::silu(halves[0]) * halves[1], weight, down_bias);
  }
  torch::autograd::backward({outcome.output}, {output_gradient});
  outcome.gate_up_gradient = gate_up.grad();
  outcome.weight_gradient = weight.grad();
  if (bias) outcome.bias_gradient = down_bias.grad();
  return outcome;
}

TEST(SwiGluDown, SameOutputAndGradientsAsTheExpression) {
  for (const at::ScalarType type : {at::kFloat, at::kBFloat16}) {
    SCOPED_TRACE(c10::toString(type));
    const Outcome expression = run(false, type, false);
    const Outcome fused = run(true, type, false);
    EXPECT_TRUE(fused.output.equal(expression.output));
    EXPECT_TRUE(fused.gate_up_gradient.equal(expression.gate_up_gradient));
    EXPECT_TRUE(fused.weight_gradient.equal(expression.weight_gradient));
    EXPECT_GT(expression.gate_up_gradient.abs().sum().item<double>(), 0);
  }
}

TEST(SwiGluDown, WithABiasTheSameUpToRounding) {
  const Outcome expression = run(false, at::kFloat, true);
  const Outcome fused = run(true, at::kFloat, true);
  EXPECT_TRUE(fused.output.equal(expression.output));
  EXPECT_TRUE(fused.gate_up_gradient.equal(expression.gate_up_gradient));
  EXPECT_TRUE(fused.weight_gradient.equal(expression.weight_gradient));
  EXPECT_TRUE(at::allclose(fused.bias_gradient, expression.bias_gradient, 1e-6, 1e-6));
}

TEST(SwiGluDown, WithoutAGraphThePlainExpression) {
  const at::Tensor gate_up = at::randn({7, 16});
  const at::Tensor weight = at::randn({6, 8});
  const std::vector<at::Tensor> halves = gate_up.chunk(2, -1);
  const at::Tensor output = swiglu_down(gate_up, weight);
  EXPECT_FALSE(output.requires_grad());
  EXPECT_TRUE(output.equal(at::linear(at::silu(halves[0]) * halves[1], weight)));
}

TEST(SwiGluDown, KeepsOneNodeForTheWholeExpression) {
  const at::Tensor gate_up = at::randn({7, 16}).set_requires_grad(true);
  const at::Tensor weight = at::randn({6, 8}).set_requires_grad(true);
  const at::Tensor output = swiglu_down(gate_up, weight);
  ASSERT_TRUE(output.grad_fn());
  // Its inputs are the leaves themselves: no silu, product or projection node between.
  for (const auto& edge : output.grad_fn()->next_edges()) {
    if (edge.function) {
      EXPECT_NE(edge.function->name().find("AccumulateGrad"), std::string::npos)
          << edge.function->name();
    }
  }
}

TEST(SwiGluDown, WrongShapesAreNamed) {
  try {
    swiglu_down(at::randn({4, 10}), at::randn({6, 8}));
    ADD_FAILURE() << "a gate_up of 10 columns against a down projection of 8 was accepted";
  } catch (const std::invalid_argument& error) {
    const std::string message = error.what();
    EXPECT_NE(message.find("gate_up [4, 10]"), std::string::npos) << message;
    EXPECT_NE(message.find("down_weight [6, 8]"), std::string::npos) << message;
  }
  EXPECT_THROW(swiglu_down(at::randn({4, 16}), at::randn({6, 8}), at::randn({5})),
               std::invalid_argument);
}

}  // namespace
}  // namespace fsdp::models
