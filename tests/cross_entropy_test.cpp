// next_token_cross_entropy against ATen's cross_entropy_loss, which it
// replaces in the trainer: the same value and gradient, the ignore index, a
// 16-bit input, the once-only backward and the input errors.
#include "fsdp/stages/cross_entropy.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <stdexcept>
#include <string>

namespace fsdp::stages {
namespace {

struct Inputs {
  at::Tensor logits;
  at::Tensor targets;
};

Inputs random_inputs(std::int64_t rows, std::int64_t vocabulary, std::uint64_t seed) {
  at::manual_seed(seed);
  return {at::randn({rows, vocabulary}) * 4, at::randint(vocabulary, {rows}, at::kLong)};
}

// d(loss * scale)/d(logits) through `loss_function`.
template <typename LossFunction>
std::pair<at::Tensor, at::Tensor> value_and_gradient(const at::Tensor& logits, double scale,
                                                     LossFunction loss_function) {
  const at::Tensor leaf = logits.detach().clone().requires_grad_(true);
  const at::Tensor loss = loss_function(leaf);
  (loss * scale).backward();
  return {loss.detach(), leaf.grad()};
}

TEST(NextTokenCrossEntropy, MatchesAtenValueAndGradient) {
  const auto inputs = random_inputs(37, 53, 1);
  const auto [ours, our_gradient] = value_and_gradient(
      inputs.logits, 0.25,
      [&](const at::Tensor& x) { return next_token_cross_entropy(x, inputs.targets); });
  const auto [theirs, their_gradient] = value_and_gradient(
      inputs.logits, 0.25,
      [&](const at::Tensor& x) { return at::cross_entropy_loss(x, inputs.targets); });
  EXPECT_NEAR(ours.item<double>(), theirs.item<double>(), 1e-6 * theirs.abs().item<double>());
  EXPECT_TRUE(at::allclose(our_gradient, their_gradient, 1e-5, 1e-8))
      << (our_gradient - their_gradient).abs().max().item<double>();
  EXPECT_GT(their_gradient.abs().max().item<double>(), 1e-3);  // the check has something to see
}

TEST(NextTokenCrossEntropy, IgnoredRowsCountNowhere) {
  auto inputs = random_inputs(16, 10, 2);
  inputs.targets.index_put_({at::arange(0, 16, 3)}, -100);
  const auto [ours, our_gradient] = value_and_gradient(
      inputs.logits, 1.0,
      [&](const at::Tensor& x) { return next_token_cross_entropy(x, inputs.targets); });
  const auto [theirs, their_gradient] = value_and_gradient(
      inputs.logits, 1.0,
      [&](const at::Tensor& x) { return at::cross_entropy_loss(x, inputs.targets); });
  EXPECT_NEAR(ours.item<double>(), theirs.item<double>(), 1e-6 * theirs.abs().item<double>());
  EXPECT_TRUE(at::allclose(our_gradient, their_gradient, 1e-5, 1e-8));
  EXPECT_EQ(our_gradient.index({at::arange(0, 16, 3)}).abs().sum().item<double>(), 0.0);
  // Another ignore index: -100 is then an error, the new index is skipped.
  auto shifted = inputs.targets.masked_fill(inputs.targets.eq(-100), 7);
  const auto seven = next_token_cross_entropy(inputs.logits, shifted, /*ignore_index=*/7);
  const auto theirs_seven =
      at::cross_entropy_loss(inputs.logits, shifted, {}, at::Reduction::Mean, 7);
  EXPECT_NEAR(seven.item<double>(), theirs_seven.item<double>(), 1e-6);
}

TEST(NextTokenCrossEntropy, SixteenBitLogitsGiveASixteenBitGradient) {
  const auto inputs = random_inputs(24, 40, 3);
  const at::Tensor half = inputs.logits.to(at::kBFloat16);
  const auto [ours, our_gradient] = value_and_gradient(
      half, 1.0, [&](const at::Tensor& x) { return next_token_cross_entropy(x, inputs.targets); });
  const auto [theirs, their_gradient] = value_and_gradient(half, 1.0, [&](const at::Tensor& x) {
    return at::cross_entropy_loss(x.to(at::kFloat), inputs.targets);
  });
  EXPECT_EQ(ours.scalar_type(), at::kFloat);
  EXPECT_EQ(our_gradient.scalar_type(), at::kBFloat16);
  EXPECT_NEAR(ours.item<double>(), theirs.item<double>(), 1e-6 * theirs.abs().item<double>());
  EXPECT_TRUE(at::allclose(our_gradient.to(at::kFloat), their_gradient.to(at::kFloat), 1e-2, 1e-5));
}

TEST(NextTokenCrossEntropy, WithoutAGraphTheValueIsTheSameBits) {
  const auto inputs = random_inputs(20, 30, 4);
  const at::Tensor leaf = inputs.logits.clone().requires_grad_(true);
  const at::Tensor with_graph = next_token_cross_entropy(leaf, inputs.targets);
  at::Tensor without_graph;
  {
    at::NoGradGuard no_graph;
    without_graph = next_token_cross_entropy(leaf, inputs.targets);
  }
  EXPECT_TRUE(with_graph.requires_grad());
  EXPECT_FALSE(without_graph.requires_grad());
  EXPECT_TRUE(at::equal(with_graph.detach(), without_graph));
}

TEST(NextTokenCrossEntropy, ASecondBackwardIsRefused) {
  const auto inputs = random_inputs(8, 12, 5);
  const at::Tensor leaf = inputs.logits.clone().requires_grad_(true);
  const at::Tensor loss = next_token_cross_entropy(leaf, inputs.targets);
  loss.backward({}, /*retain_graph=*/true);
  try {
    loss.backward();
    FAIL() << "a second backward went through";
  } catch (const std::exception& error) {
    EXPECT_NE(std::string(error.what()).find("second backward"), std::string::npos) << error.what();
  }
}

void expect_invalid(const at::Tensor& logits, const at::Tensor& targets, const std::string& words) {
  try {
    next_token_cross_entropy(logits, targets);
    FAIL() << "accepted; expected an error saying '" << words << "'";
  } catch (const std::invalid_argument& error) {
    EXPECT_NE(std::string(error.what()).find(words), std::string::npos) << error.what();
  }
}

TEST(NextTokenCrossEntropy, BadInputsAreNamed) {
  const auto inputs = random_inputs(6, 9, 6);
  expect_invalid(
      inputs.logits.reshape({2, 3, 9}), inputs.targets,
      "expected logits of shape [rows, vocabulary] and a floating type, found [2, 3, 9]");
  expect_invalid(inputs.logits.to(at::kLong), inputs.targets, "found [6, 9] Long");
  expect_invalid(inputs.logits, inputs.targets.narrow(0, 0, 5),
                 "expected int64 targets of shape [6]");
  expect_invalid(inputs.logits, inputs.targets.to(at::kInt), "found [6] Int");
  auto outside = inputs.targets.clone();
  outside[4] = 9;
  expect_invalid(inputs.logits, outside, "target 9 of row 4 is outside the vocabulary [0, 9)");
  outside[4] = -1;
  expect_invalid(inputs.logits, outside, "target -1 of row 4");
}

}  // namespace
}  // namespace fsdp::stages
