// AdamW on shards at world sizes 1-4 against torch::optim::AdamW on the same
// unsharded parameters: the same initial weights (the deterministic
// initialiser), the same gradients (a pure function of step, name and index),
// the same global-norm clipping. Within 1e-6 after 10 steps.
#include <gtest/gtest.h>
#include <torch/optim/adamw.h>

#include <ATen/ATen.h>

#include <cmath>

#include "fsdp/inspector.h"
#include "fsdp/stages/learning_rate_schedule.h"
#include "fsdp/stages/sharded_adamw.h"
#include "mpi_test_environment.h"

namespace fsdp::stages {
namespace {

constexpr std::uint64_t kSeed = 99;

std::vector<ParameterSpec> model_parameters() {
  return {{"embedding", {13, 7}, ElementType::kFloat32, ParameterInit::normal(0, 0.5)},
          {"norm", {7}, ElementType::kFloat32, ParameterInit::constant(1.0)},
          {"empty", {0, 4}, ElementType::kFloat32, ParameterInit::normal(0, 1)},
          {"attention.weight", {7, 7}, ElementType::kFloat32, ParameterInit::uniform(-0.3, 0.3)},
          {"attention.bias", {7}, ElementType::kFloat32, ParameterInit::normal(0, 0.1)},
          {"head.scale", {}, ElementType::kFloat32, ParameterInit::constant(0.5)}};
}

// The full gradient of one parameter at one step, identical on every rank.
at::Tensor full_gradient(const ParameterSlot& slot, std::int64_t step) {
  std::vector<double> values(static_cast<std::size_t>(slot.numel));
  fill_initial_values(ParameterInit::normal(0, 1), parameter_stream_key(1000 + step, slot.name), 0,
                      slot.numel, values.data());
  return at::tensor(values, at::kDouble).to(at::kFloat).view(slot.shape);
}

at::Tensor full_initial_value(const ParameterSlot& slot) {
  std::vector<double> values(static_cast<std::size_t>(slot.numel));
  fill_initial_values(slot.init, parameter_stream_key(kSeed, slot.name), 0, slot.numel,
                      values.data());
  return at::tensor(values, at::kDouble).to(at::kFloat).view(slot.shape);
}

TEST(ShardedAdamW, MatchesUnshardedTorchAdamWWithGlobalNormClipping) {
  auto group = testing::runtime().process_group();
  FsdpOptions fsdp_options;
  fsdp_options.alignment = 4;  // parameters straddle ranks
  Fsdp stage("decoder.0", model_parameters(), group, fsdp_options);
  stage.initialize_weights(kSeed);
  const FlatLayout& layout = stage.layout();

  ShardedAdamWOptions options;
  options.beta2 = 0.95;
  options.weight_decay = 0.1;
  options.max_gradient_norm = 1.0;  // gradients ~ N(0, 1) over ~180 elements: always clipped
  ShardedAdamW optimizer({&stage}, options);
  const LearningRateSchedule schedule{1e-2, 1e-3, 3, 10};

  // The unsharded reference: decay on matrices only, as decays_by_default.
  std::vector<at::Tensor> reference;
  std::vector<at::Tensor> decayed, not_decayed;
  for (const ParameterSlot& slot : layout.parameters()) {
    reference.push_back(full_initial_value(slot).set_requires_grad(true));
    (decays_by_default(slot) ? decayed : not_decayed).push_back(reference.back());
  }
  auto group_options = [&](double decay) {
    auto o = std::make_unique<torch::optim::AdamWOptions>(1.0);
    o->betas({options.beta1, options.beta2}).eps(options.epsilon).weight_decay(decay);
    return o;
  };
  std::vector<torch::optim::OptimizerParamGroup> groups;
  groups.emplace_back(decayed, group_options(options.weight_decay));
  groups.emplace_back(not_decayed, group_options(0.0));
  torch::optim::AdamW torch_optimizer(groups, torch::optim::AdamWOptions(1.0));

  for (std::int64_t step = 1; step <= 10; ++step) {
    // Gradients: the full one for the reference, this rank's slices for the shards.
    double squared_norm = 0;
    for (std::size_t p = 0; p < layout.parameters().size(); ++p) {
      const at::Tensor gradient = full_gradient(layout.parameters()[p], step);
      reference[p].mutable_grad() = gradient.clone();
      squared_norm += gradient.to(at::kDouble).square().sum().item<double>();
    }
    for (const OwnedSlice& slice : layout.owned_slices(group->rank())) {
      const at::Tensor gradient =
          full_gradient(layout.parameters()[slice.parameter_index], step).reshape({-1});
      stage.gradient_shard()
          .narrow(0, slice.shard_range.begin, slice.shard_range.size())
          .copy_(gradient.narrow(0, slice.parameter_range.begin, slice.parameter_range.size()));
    }
    // Clip the reference as torch.nn.utils.clip_grad_norm_ does.
    const double norm = std::sqrt(squared_norm);
    const float scale =
        static_cast<float>(std::min(1.0, options.max_gradient_norm / (norm + 1e-6)));
    for (at::Tensor& parameter : reference) parameter.mutable_grad().mul_(scale);
    for (auto& param_group : torch_optimizer.param_groups()) {
      param_group.options().set_lr(schedule.at(step));
    }
    torch_optimizer.step();

    stage.restore_parameters();
    const double sharded_norm = optimizer.step(schedule.at(step));
    EXPECT_NEAR(sharded_norm, norm, 1e-12 * norm) << "step " << step;
    EXPECT_FALSE(stage.is_restored()) << "the step must invalidate the stage";
  }
  EXPECT_EQ(optimizer.steps_taken(), 10);
  for (std::size_t p = 0; p < layout.parameters().size(); ++p) {
    const std::string& name = layout.parameters()[p].name;
    const at::Tensor ours = read_parameter(stage, name);
    if (ours.numel() == 0) continue;
    EXPECT_LE((ours - reference[p].detach()).abs().max().item<double>(), 1e-6) << name;
  }
  // Padding stays zero in every shard.
  const ElementRange padding = layout.padding_in_shard(group->rank());
  EXPECT_EQ(stage.weight_shard()
                .narrow(0, padding.begin, padding.size())
                .count_nonzero()
                .item<std::int64_t>(),
            0);
  EXPECT_EQ(optimizer.exp_avg(0)
                .narrow(0, padding.begin, padding.size())
                .count_nonzero()
                .item<std::int64_t>(),
            0);
  EXPECT_EQ(optimizer.state_bytes(), 2 * layout.shard_numel() * 4);
}

// A NaN or Inf gradient on one rank skips the step on every rank: nothing in
// the weights, the moments or the step count changes (clipping alone would
// scale by min(1, max / NaN) = 1 and write NaN everywhere).
TEST(ShardedAdamW, NonFiniteGradientsSkipTheStepEverywhere) {
  auto group = testing::runtime().process_group();
  Fsdp stage("decoder.0", model_parameters(), group, FsdpOptions{});
  stage.initialize_weights(kSeed);
  ShardedAdamWOptions options;
  options.max_gradient_norm = 1.0;
  ShardedAdamW optimizer({&stage}, options);
  stage.gradient_shard().fill_(0.5);
  optimizer.step(1e-2);
  const at::Tensor weights = stage.weight_shard().clone();
  const at::Tensor moment = optimizer.exp_avg(0).clone();
  for (const float bad : {std::nanf(""), INFINITY}) {
    stage.gradient_shard().fill_(0.5);
    // Only rank 0 sees it (its first element is data, never padding): the
    // global norm carries it to the others.
    if (group->rank() == 0) stage.gradient_shard()[0] = bad;
    EXPECT_FALSE(std::isfinite(optimizer.step(1e-2)));
    EXPECT_TRUE(at::equal(stage.weight_shard(), weights));
    EXPECT_TRUE(at::equal(optimizer.exp_avg(0), moment));
    EXPECT_EQ(optimizer.steps_taken(), 1);
  }
}

TEST(ShardedAdamW, RefusesShardsThatAreNotFloat32) {
  FsdpOptions fsdp_options;
  fsdp_options.shard_dtype = ElementType::kBFloat16;
  fsdp_options.compute_dtype = ElementType::kBFloat16;
  Fsdp stage("decoder.7", model_parameters(), testing::runtime().process_group(), fsdp_options);
  try {
    ShardedAdamW optimizer({&stage}, {});
    ADD_FAILURE() << "bfloat16 master shards were accepted";
  } catch (const std::invalid_argument& error) {
    EXPECT_NE(std::string(error.what()).find("stage 'decoder.7'"), std::string::npos)
        << error.what();
  }
}

}  // namespace
}  // namespace fsdp::stages
