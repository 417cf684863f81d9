// Adopted torch::nn modules: their parameters move into the flat layout with
// their values, the module computes on the stage's buffer, and training
// matches the same module trained unsharded with torch::optim::AdamW.
#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <torch/nn/modules/linear.h>
#include <torch/optim/adamw.h>

#include "fsdp/inspector.h"
#include "fsdp/stages/adopted_module.h"
#include "fsdp/stages/multi_stage_model.h"
#include "fsdp/stages/sharded_adamw.h"
#include "mpi_test_environment.h"

namespace fsdp::stages {
namespace {

std::unique_ptr<Layer> adopt_linear(const std::string& prefix, torch::nn::Linear linear) {
  return std::make_unique<AdoptedModule>(
      prefix, linear.ptr(),
      [linear](const at::Tensor& x) mutable { return at::tanh(linear->forward(x)); });
}

TEST(AdoptedModule, TrainsLikeTheSameModulesUnsharded) {
  auto group = testing::runtime().process_group();
  torch::manual_seed(5);  // the same modules on every rank
  std::vector<torch::nn::Linear> originals = {torch::nn::Linear(6, 9), torch::nn::Linear(9, 4)};
  std::vector<torch::nn::Linear> reference;
  std::vector<at::Tensor> reference_parameters;
  for (const auto& linear : originals) {
    reference.push_back(std::dynamic_pointer_cast<torch::nn::LinearImpl>(linear->clone()));
    for (const at::Tensor& p : reference.back()->parameters()) reference_parameters.push_back(p);
  }
  const at::Tensor first_weight = originals[0]->weight.detach().clone();

  std::vector<std::unique_ptr<Layer>> layers;
  layers.push_back(adopt_linear("in.", originals[0]));
  layers.push_back(adopt_linear("out.", originals[1]));
  MultiStageOptions options;
  options.zero_stage = 3;
  options.prefetch = true;
  options.fsdp.alignment = 4;
  MultiStageModel model(std::move(layers), group, options);
  model.initialize_weights(0);
  // The values moved in: the inspector reads them from the shards.
  EXPECT_TRUE(read_parameter(model.schedule_stage(0), "in.weight").equal(first_weight));
  EXPECT_TRUE(
      read_parameter(model.schedule_stage(1), "out.bias").equal(reference[1]->bias.detach()));
  // The values were freed; a second call says so and leaves the shards alone.
  EXPECT_THROW(model.initialize_weights(0), std::logic_error);
  EXPECT_TRUE(read_parameter(model.schedule_stage(0), "in.weight").equal(first_weight));

  ShardedAdamWOptions adam;
  adam.weight_decay = 0.0;
  ShardedAdamW optimizer(model.stages(), adam);
  torch::optim::AdamW reference_optimizer(reference_parameters,
                                          torch::optim::AdamWOptions(1e-2).weight_decay(0.0));
  for (int step = 0; step < 5; ++step) {
    const at::Tensor input = at::arange(4 * 6, at::kFloat).view({4, 6}).div(10).add(step);
    model.zero_gradients();
    const double loss =
        model.forward_backward(input, [](const at::Tensor& y) { return y.square().mean(); });
    model.reduce_gradients();
    optimizer.step(1e-2);

    reference_optimizer.zero_grad();
    at::Tensor y = input;
    for (auto& linear : reference) y = at::tanh(linear->forward(y));
    const at::Tensor reference_loss = y.square().mean();
    reference_loss.backward();
    reference_optimizer.step();
    EXPECT_NEAR(loss, reference_loss.item<double>(), 1e-6) << "step " << step;
  }
  EXPECT_TRUE(read_parameter(model.schedule_stage(0), "in.weight")
                  .allclose(reference[0]->weight, 1e-5, 1e-6));
  // The module itself now computes on the stage's buffer.
  model.schedule_stage(0).restore_parameters();
  EXPECT_EQ(originals[0]->weight.data_ptr(),
            model.schedule_stage(0).parameter("in.weight").data_ptr());
}

TEST(AdoptedModule, RefusesParametersItCannotMove) {
  torch::nn::Linear linear(3, 3);
  linear->to(at::kDouble);
  try {
    AdoptedModule adopted("head.", linear.ptr(), [](const at::Tensor& x) { return x; });
    ADD_FAILURE() << "a float64 module was adopted";
  } catch (const std::invalid_argument& error) {
    EXPECT_NE(std::string(error.what()).find("parameter 'weight' is Double"), std::string::npos)
        << error.what();
  }
}

}  // namespace
}  // namespace fsdp::stages
