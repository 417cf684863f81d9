// stack_slice against select(), through autograd: the same values and
// gradients, and no gradient of the stack's size on the way.
#include "fsdp/models/stack_slice.h"

#include <gtest/gtest.h>

#include <ATen/ATen.h>
#include <torch/csrc/autograd/autograd.h>

#include <stdexcept>
#include <string>
#include <vector>

namespace fsdp::models {
namespace {

constexpr std::int64_t kBlocks = 3;

// Block l computes tanh(x W_l), chained over the blocks, then a weighted sum;
// every slice gets a different, nonzero gradient.
at::Tensor chain(const at::Tensor& stacked, bool fused) {
  at::Tensor x = at::linspace(-1, 1, 20).reshape({4, 5});
  for (std::int64_t l = 0; l < kBlocks; ++l) {
    const at::Tensor weight = fused ? stack_slice(stacked, l) : stacked.select(0, l);
    x = at::tanh(at::matmul(x, weight));
  }
  return (x * at::linspace(0.5, 2, 20).reshape({4, 5})).sum();
}

at::Tensor new_stack() {
  at::manual_seed(5);
  return at::randn({kBlocks, 5, 5}).set_requires_grad(true);
}

TEST(StackSlice, SameValuesAndGradientsAsSelect) {
  const at::Tensor expected_stack = new_stack();
  const at::Tensor expected = chain(expected_stack, false);
  torch::autograd::backward({expected});
  const at::Tensor stack = new_stack();
  const at::Tensor loss = chain(stack, true);
  torch::autograd::backward({loss});
  EXPECT_TRUE(loss.equal(expected));
  ASSERT_TRUE(stack.grad().defined());
  EXPECT_TRUE(stack.grad().equal(expected_stack.grad()));
  for (std::int64_t l = 0; l < kBlocks; ++l) {
    EXPECT_GT(stack.grad().select(0, l).abs().sum().item<double>(), 0) << "block " << l;
  }
}

TEST(StackSlice, AddsIntoAnExistingGradientInPlace) {
  const at::Tensor stack = new_stack();
  const at::Tensor buffer = at::full({kBlocks, 5, 5}, 0.25);
  stack.mutable_grad() = buffer;
  torch::autograd::backward({chain(stack, true)});
  const at::Tensor expected_stack = new_stack();
  torch::autograd::backward({chain(expected_stack, false)});
  EXPECT_TRUE(stack.grad().is_same(buffer)) << "the gradient was replaced, not added into";
  EXPECT_TRUE(buffer.equal(expected_stack.grad() + 0.25));
}

TEST(StackSlice, NoGradientOfTheStacksSizeFlowsThroughTheGraph) {
  // select(): the sum of the blocks' full-size gradients reaches the stack's
  // accumulation once; stack_slice: nothing does (libtorch 2 still calls the
  // hook, with an undefined gradient).
  for (const bool fused : {false, true}) {
    const at::Tensor stack = new_stack();
    int reached = 0;
    stack.register_hook([&reached](const at::Tensor& gradient) {
      if (gradient.defined()) ++reached;
    });
    torch::autograd::backward({chain(stack, fused)});
    EXPECT_EQ(reached, fused ? 0 : 1) << (fused ? "stack_slice" : "select");
    EXPECT_TRUE(stack.grad().defined());
  }
}

TEST(StackSlice, LooksUpTheGradientDuringTheBackward) {
  // A harness that sets .grad to none between forward and backward (as
  // torch's zero_grad does by default) still gets the gradient.
  const at::Tensor stack = new_stack();
  stack.mutable_grad() = at::ones({kBlocks, 5, 5});
  const at::Tensor loss = chain(stack, true);
  stack.mutable_grad() = at::Tensor();
  torch::autograd::backward({loss});
  const at::Tensor expected_stack = new_stack();
  torch::autograd::backward({chain(expected_stack, false)});
  ASSERT_TRUE(stack.grad().defined());
  EXPECT_TRUE(stack.grad().equal(expected_stack.grad()));
}

TEST(StackSlice, WithoutAGraphOrForANonLeafItIsSelect) {
  const at::Tensor stack = new_stack();
  {
    at::NoGradGuard no_grad;
    const at::Tensor slice = stack_slice(stack, 1);
    EXPECT_EQ(slice.data_ptr(), stack.select(0, 1).data_ptr()) << "not a view";
    EXPECT_TRUE(slice.equal(stack.select(0, 1)));
  }
  const at::Tensor computed = stack * 2;
  torch::autograd::backward({chain(computed, true)});
  const at::Tensor expected_stack = new_stack();
  torch::autograd::backward({chain(expected_stack * 2, false)});
  EXPECT_TRUE(stack.grad().equal(expected_stack.grad()));
}

TEST(StackSlice, ADoubleBackwardIsRefused) {
  const at::Tensor stack = new_stack();
  const at::Tensor loss = chain(stack, true);
  try {
    torch::autograd::backward({loss}, {}, /*keep_graph=*/true, /*create_graph=*/true);
    FAIL() << "a backward with create_graph went through";
  } catch (const std::exception& error) {
    EXPECT_NE(std::string(error.what()).find("create_graph"), std::string::npos) << error.what();
  }
}

}  // namespace
}  // namespace fsdp::models
