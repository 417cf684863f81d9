// The multi-stage model's memory accounting against the formula, computed
// here independently from per-stage layouts, and the model's option checks.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "fsdp/models/llama.h"
#include "fsdp/stages/multi_stage_model.h"
#include "fsdp/stages/sharded_adamw.h"
#include "mpi_test_environment.h"

namespace fsdp::stages {
namespace {

models::LlamaConfig small_llama() {
  models::LlamaConfig config;
  config.vocabulary = 48;
  config.hidden = 16;
  config.heads = 2;
  config.intermediate = 40;
  config.layers = 5;
  config.max_sequence = 8;
  return config;
}

// Per stage (one layer each): its layout at this world size.
std::vector<FlatLayout> stage_layouts(const models::LlamaConfig& config, int world, int alignment) {
  std::vector<FlatLayout> layouts;
  for (const auto& layer : models::build_llama_layers(config)) {
    layouts.emplace_back(layer->parameter_specs(), world, alignment);
  }
  return layouts;
}

TEST(ModelMemory, ZeroThreeWithTwoSharedBuffersHoldsShardsPlusTwoStageBuffers) {
  auto group = testing::runtime().process_group();
  const models::LlamaConfig config = small_llama();
  MultiStageOptions options;
  options.zero_stage = 3;
  options.shared_weight_buffers = 2;
  options.shared_gradient_buffers = 2;
  options.prefetch = true;
  MultiStageModel model(models::build_llama_layers(config), group, options);
  ShardedAdamW optimizer(model.stages(), {});

  const std::vector<FlatLayout> layouts =
      stage_layouts(config, group->size(), static_cast<int>(options.fsdp.alignment));
  ASSERT_EQ(layouts.size(), model.schedule_stage_count());
  std::int64_t shard_elements = 0;
  std::int64_t model_elements = 0;
  std::int64_t largest[2] = {0, 0};  // per shared buffer: its largest stage
  for (std::size_t s = 0; s < layouts.size(); ++s) {
    shard_elements += layouts[s].shard_numel();
    model_elements += layouts[s].unpadded_numel();
    largest[s % 2] = std::max(largest[s % 2], layouts[s].padded_numel());
  }
  const ModelMemory memory = model.memory(&optimizer);
  // Shared weight buffers are overwritten while a stage is released, so no
  // shard aliases its buffer: every shard is memory of its own.
  EXPECT_EQ(memory.weight_shards, shard_elements * 4);
  EXPECT_EQ(memory.gradient_shards, shard_elements * 4);
  EXPECT_EQ(memory.optimizer_state, 2 * shard_elements * 4);
  EXPECT_EQ(memory.weight_buffers, (largest[0] + largest[1]) * 4);
  EXPECT_EQ(memory.gradient_buffers, (largest[0] + largest[1]) * 4);
  // The largest stage's gradient reduction's scratch (what a reduction
  // allocates is measured in process_group_test).
  std::int64_t scratch = 0;
  for (const FlatLayout& layout : layouts) {
    scratch =
        std::max(scratch, group->reduce_scatter_scratch_bytes(
                              layout.padded_numel(), ElementType::kFloat32, ElementType::kFloat32));
  }
  EXPECT_EQ(memory.collective_staging, scratch);
  EXPECT_GT(memory.collective_staging, 0);
  EXPECT_EQ(memory.total(), memory.weight_shards + memory.gradient_shards + memory.optimizer_state +
                                memory.weight_buffers + memory.gradient_buffers +
                                memory.collective_staging);
  // No rank holds the whole model's weights in its buffers: only two stages.
  EXPECT_LT(memory.weight_buffers, model_elements * 4);
  if (group->rank() == 0) std::cout << "[ memory   ] " << memory.describe() << std::endl;

  // Training does not change the accounting (the buffers never grow).
  model.zero_gradients();
  const at::Tensor tokens = at::randint(config.vocabulary, {2, 8});
  model.forward_backward(tokens, [](const at::Tensor& logits) { return logits.square().mean(); });
  optimizer.step(1e-3);
  EXPECT_EQ(model.memory(&optimizer).total(), memory.total());
}

TEST(ModelMemory, ZeroOneKeepsABufferPairPerStageAndAliasesShards) {
  auto group = testing::runtime().process_group();
  const models::LlamaConfig config = small_llama();
  MultiStageModel model(models::build_llama_layers(config), group, {});
  const std::vector<FlatLayout> layouts = stage_layouts(config, group->size(), 64);
  std::int64_t shard_elements = 0;
  std::int64_t padded_elements = 0;
  for (const FlatLayout& layout : layouts) {
    shard_elements += layout.shard_numel();
    padded_elements += layout.padded_numel();
  }
  const ModelMemory memory = model.memory();
  EXPECT_EQ(memory.weight_shards, 0);  // Note [Shard aliasing]
  EXPECT_EQ(memory.gradient_shards, shard_elements * 4);
  EXPECT_EQ(memory.optimizer_state, 0);
  EXPECT_EQ(memory.weight_buffers, padded_elements * 4);
  EXPECT_EQ(memory.gradient_buffers, padded_elements * 4);
}

void expect_invalid(const MultiStageOptions& options, const std::string& expected) {
  try {
    MultiStageModel model(models::build_llama_layers(small_llama()),
                          testing::runtime().process_group(), options);
    ADD_FAILURE() << "accepted: " << expected;
  } catch (const std::invalid_argument& error) {
    EXPECT_NE(std::string(error.what()).find(expected), std::string::npos) << error.what();
  }
}

TEST(ModelOptions, ImpossibleCombinationsAreRefusedWithTheReason) {
  MultiStageOptions options;
  options.shared_weight_buffers = 2;
  expect_invalid(options, "shared_weight_buffers = 2 needs zero_stage 3");
  options = {};
  options.shared_gradient_buffers = 1;
  expect_invalid(options, "shared_gradient_buffers = 1 needs zero_stage 2 or 3");
  options = {};
  options.zero_stage = 4;
  expect_invalid(options, "zero_stage must be 1, 2 or 3, got 4");
  options = {};
  options.layers_per_stage = 0;
  expect_invalid(options, "layers_per_stage must be at least 1, got 0");
}

// A layer that declares one parameter of a given shape.
class OneParameter final : public Layer {
 public:
  OneParameter(std::string name, std::vector<std::int64_t> shape)
      : name_(std::move(name)), shape_(std::move(shape)) {}
  std::vector<ParameterSpec> parameter_specs() const override { return {{name_, shape_}}; }
  void bind(std::vector<at::Tensor> parameters) override { weight_ = parameters.at(0); }
  at::Tensor forward(const at::Tensor& input) override { return input; }

 private:
  std::string name_;
  std::vector<std::int64_t> shape_;
  at::Tensor weight_;
};

TEST(ModelOptions, TiedParameterWithTwoShapesNamesBothDeclarations) {
  std::vector<std::unique_ptr<Layer>> layers;
  layers.push_back(
      std::make_unique<OneParameter>("embedding.weight", std::vector<std::int64_t>{8, 4}));
  layers.push_back(
      std::make_unique<OneParameter>("embedding.weight", std::vector<std::int64_t>{4, 8}));
  try {
    MultiStageModel model(std::move(layers), testing::runtime().process_group(), {});
    ADD_FAILURE() << "a tied parameter with two shapes was accepted";
  } catch (const std::invalid_argument& error) {
    const std::string message = error.what();
    EXPECT_NE(message.find("tied parameter 'embedding.weight' is declared by layer 0 as [8, 4]"),
              std::string::npos)
        << message;
    EXPECT_NE(message.find("by layer 1 as [4, 8]"), std::string::npos) << message;
  }
}

// A layer without parameters may form a stage of its own.
class Doubling final : public Layer {
 public:
  std::vector<ParameterSpec> parameter_specs() const override { return {}; }
  void bind(std::vector<at::Tensor>) override {}
  at::Tensor forward(const at::Tensor& input) override { return input * 2; }
};

TEST(ModelOptions, AStageWithoutParametersRuns) {
  std::vector<std::unique_ptr<Layer>> layers;
  layers.push_back(std::make_unique<Doubling>());
  layers.push_back(std::make_unique<OneParameter>("scale", std::vector<std::int64_t>{3}));
  MultiStageOptions options;
  options.zero_stage = 3;
  options.prefetch = true;
  MultiStageModel model(std::move(layers), testing::runtime().process_group(), options);
  EXPECT_FALSE(model.schedule_stage_has_parameters(0));
  EXPECT_TRUE(model.forward(at::ones({3})).equal(at::full({3}, 2.0)));
}

// Under ZeRO-3 a stage is released after use: reading it names stage and parameter.
TEST(ModelOptions, ReadingAReleasedStageNamesStageAndParameter) {
  MultiStageOptions options;
  options.zero_stage = 3;
  MultiStageModel model(models::build_llama_layers(small_llama()),
                        testing::runtime().process_group(), options);
  model.initialize_weights(1);
  model.forward(at::randint(48, {1, 8}));
  try {
    model.schedule_stage(1).parameter("decoder.0.attention.qkv.weight");
    ADD_FAILURE() << "a released stage's parameter was readable";
  } catch (const NotRestoredError& error) {
    const std::string message = error.what();
    EXPECT_NE(message.find("stage 'stage.1': parameter 'decoder.0.attention.qkv.weight'"),
              std::string::npos)
        << message;
  }
}

}  // namespace
}  // namespace fsdp::stages
