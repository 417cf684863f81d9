// Parity, the gold standard: the sharded runtime (multi-stage model, data
// parallel over the ranks, ShardedAdamW with global-norm clipping and the
// schedule) against plain unsharded libtorch (the same layers bound to
// ordinary tensors, the whole batch, torch::optim::AdamW), at world sizes 1-4,
// ZeRO 1 and 3, one or several layers per stage. The initial weights must be
// bitwise equal; per-step losses within 1e-5 relative for 20 steps (float32:
// the only differences are the order of the batch reductions across ranks).
#include <gtest/gtest.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/optim/adamw.h>

#include <ATen/ATen.h>

#include <cmath>

#include "fsdp/inspector.h"
#include "fsdp/torch_interop.h"
#include "models/llama.h"
#include "mpi_test_environment.h"
#include "stages/learning_rate_schedule.h"
#include "stages/multi_stage_model.h"
#include "stages/sharded_adamw.h"

namespace fsdp::stages {
namespace {

constexpr std::uint64_t kSeed = 2024;
constexpr std::int64_t kGlobalBatch = 12;  // divisible by 1, 2, 3 and 4
constexpr std::int64_t kSequence = 8;
constexpr int kSteps = 20;

models::LlamaConfig tiny_llama(std::int64_t experts) {
  models::LlamaConfig config;
  config.vocabulary = 32;
  config.hidden = 16;
  config.heads = 2;
  config.intermediate = 32;
  config.layers = 2;
  config.max_sequence = kSequence;
  config.experts = experts;
  config.experts_per_token = 2;
  return config;
}

// Tokens of one step: [global batch, sequence + 1], a pure function of the
// step. Each row counts up by one from a random start (mod vocabulary), so the
// next token is learnable and the loss falls fast: a parity test on data the
// model cannot learn would compare two flat lines.
at::Tensor tokens_for_step(std::int64_t step, std::int64_t vocabulary) {
  std::vector<double> starts(kGlobalBatch);
  fill_initial_values(ParameterInit::uniform(0, static_cast<double>(vocabulary)),
                      parameter_stream_key(step, "tokens"), 0, kGlobalBatch, starts.data());
  const at::Tensor start =
      at::tensor(starts, at::kDouble).floor().to(at::kLong).view({kGlobalBatch, 1});
  return (start + at::arange(kSequence + 1, at::kLong).view({1, kSequence + 1}))
      .remainder(vocabulary);
}

at::Tensor next_token_loss(const at::Tensor& logits, const at::Tensor& targets) {
  return at::cross_entropy_loss(logits.reshape({-1, logits.size(-1)}), targets.reshape({-1}));
}

at::Tensor initial_tensor(const ParameterSpec& spec) {
  std::int64_t numel = 1;
  for (std::int64_t d : spec.shape) numel *= d;
  std::vector<double> values(static_cast<std::size_t>(numel));
  fill_initial_values(spec.init, parameter_stream_key(kSeed, spec.name), 0, numel, values.data());
  return at::tensor(values, at::kDouble).to(at::kFloat).view(spec.shape);
}

struct ParityCase {
  int zero_stage;
  int layers_per_stage;
  std::int64_t micro_batch_rows = 0;  // gradient accumulation: rows per micro-batch (0: all)
  std::int64_t experts = 0;           // 0: dense MLP; otherwise mixture of experts
};

void run_parity(const ParityCase& parity) {
  SCOPED_TRACE("zero " + std::to_string(parity.zero_stage) + ", layers per stage " +
               std::to_string(parity.layers_per_stage) + ", micro-batch rows " +
               std::to_string(parity.micro_batch_rows) + ", experts " +
               std::to_string(parity.experts));
  const models::LlamaConfig config = tiny_llama(parity.experts);
  auto group = testing::runtime().process_group();
  const int rank = group->rank();
  const std::int64_t local_batch = kGlobalBatch / group->size();

  ShardedAdamWOptions adam;
  adam.beta2 = 0.95;
  adam.weight_decay = 0.1;
  adam.max_gradient_norm = 0.5;
  const LearningRateSchedule schedule{2e-2, 2e-3, 5, kSteps};

  // The unsharded reference.
  std::vector<std::unique_ptr<Layer>> reference_layers = models::build_llama_layers(config);
  std::vector<at::Tensor> reference_parameters;
  std::vector<ParameterSpec> reference_specs;
  std::vector<at::Tensor> decayed, not_decayed;
  for (auto& layer : reference_layers) {
    std::vector<at::Tensor> bound;
    for (const ParameterSpec& spec : layer->parameter_specs()) {
      bound.push_back(initial_tensor(spec).set_requires_grad(true));
      reference_parameters.push_back(bound.back());
      reference_specs.push_back(spec);
      (spec.shape.size() >= 2 ? decayed : not_decayed).push_back(bound.back());
    }
    layer->bind(bound);
  }
  auto group_options = [&](double decay) {
    auto o = std::make_unique<torch::optim::AdamWOptions>(1.0);
    o->betas({adam.beta1, adam.beta2}).eps(adam.epsilon).weight_decay(decay);
    return o;
  };
  std::vector<torch::optim::OptimizerParamGroup> groups;
  groups.emplace_back(decayed, group_options(adam.weight_decay));
  groups.emplace_back(not_decayed, group_options(0.0));
  torch::optim::AdamW reference_optimizer(groups, torch::optim::AdamWOptions(1.0));

  // The sharded runtime.
  MultiStageOptions options;
  options.zero_stage = parity.zero_stage;
  options.layers_per_stage = parity.layers_per_stage;
  options.fsdp.alignment = 8;
  MultiStageModel model(models::build_llama_layers(config), group, options);
  model.initialize_weights(kSeed);
  ShardedAdamW optimizer(model.stages(), adam);

  if (parity.experts > 0) {
    // The experts really are fused 3-D parameters in the transformers-5 layout.
    bool found = false;
    for (std::size_t s = 0; s < model.stage_count(); ++s) {
      const FlatLayout& layout = model.stage(s).layout();
      if (!layout.contains("decoder.0.mlp.experts.gate_up_proj")) continue;
      found = true;
      EXPECT_EQ(
          layout.parameter("decoder.0.mlp.experts.gate_up_proj").shape,
          (std::vector<std::int64_t>{parity.experts, 2 * config.intermediate, config.hidden}));
      EXPECT_EQ(layout.parameter("decoder.0.mlp.experts.down_proj").shape,
                (std::vector<std::int64_t>{parity.experts, config.hidden, config.intermediate}));
    }
    EXPECT_TRUE(found) << "no fused expert parameters in the model";
  }

  // Bitwise-identical initial weights, whatever the world size.
  for (std::size_t s = 0; s < model.stage_count(); ++s) {
    for (const ParameterSlot& slot : model.stage(s).layout().parameters()) {
      EXPECT_TRUE(read_parameter(model.stage(s), slot.name)
                      .equal(initial_tensor({slot.name, slot.shape, slot.dtype, slot.init})))
          << slot.name;
    }
  }

  double first_loss = 0;
  double last_loss = 0;
  for (std::int64_t step = 1; step <= kSteps; ++step) {
    const at::Tensor tokens = tokens_for_step(step, config.vocabulary);
    const at::Tensor inputs = tokens.narrow(1, 0, kSequence);
    const at::Tensor targets = tokens.narrow(1, 1, kSequence);
    const double learning_rate = schedule.at(step);

    // Reference step: whole batch, clip_grad_norm_, AdamW.
    at::Tensor activation = inputs;
    for (auto& layer : reference_layers) activation = layer->forward(activation);
    const at::Tensor reference_loss = next_token_loss(activation, targets);
    for (at::Tensor& parameter : reference_parameters) parameter.mutable_grad() = at::Tensor();
    torch::autograd::backward({reference_loss});
    double squared_norm = 0;
    for (at::Tensor& parameter : reference_parameters) {
      squared_norm += parameter.grad().to(at::kDouble).square().sum().item<double>();
    }
    const float scale = static_cast<float>(
        std::min(1.0, adam.max_gradient_norm / (std::sqrt(squared_norm) + 1e-6)));
    for (at::Tensor& parameter : reference_parameters) parameter.mutable_grad().mul_(scale);
    for (auto& param_group : reference_optimizer.param_groups()) {
      param_group.options().set_lr(learning_rate);
    }
    reference_optimizer.step();

    // Sharded step: this rank's rows, in micro-batches whose gradients add up
    // in the buffers (each loss scaled by 1 / micro-batches, so the sum is the
    // local mean), then averaged over ranks.
    const std::int64_t micro_batch =
        parity.micro_batch_rows > 0 ? parity.micro_batch_rows : local_batch;
    const std::int64_t micro_batches = local_batch / micro_batch;
    model.zero_gradients();
    double local_loss = 0;
    for (std::int64_t micro = 0; micro < micro_batches; ++micro) {
      const std::int64_t first_row = rank * local_batch + micro * micro_batch;
      const at::Tensor micro_targets = targets.narrow(0, first_row, micro_batch);
      local_loss += model.forward_backward(
          inputs.narrow(0, first_row, micro_batch), [&](const at::Tensor& logits) {
            return next_token_loss(logits, micro_targets) / static_cast<double>(micro_batches);
          });
    }
    model.reduce_gradients();
    const double norm = optimizer.step(learning_rate);
    std::vector<double> loss = {local_loss};
    testing::runtime().host_group()->all_reduce(host_span(loss), ReduceOp::kAverage);

    const double expected = reference_loss.item<double>();
    EXPECT_NEAR(loss[0], expected, 1e-5 * std::abs(expected)) << "step " << step;
    if (step == 1) first_loss = expected;
    last_loss = expected;
    EXPECT_NEAR(norm, std::sqrt(squared_norm), 1e-4 * std::sqrt(squared_norm)) << "step " << step;
  }
  // The comparison means something only if training moved the loss.
  EXPECT_LT(last_loss, 0.8 * first_loss) << "first " << first_loss << ", last " << last_loss;
  if (rank == 0)
    std::cout << "[ parity   ] loss " << first_loss << " -> " << last_loss << std::endl;
}

TEST(Parity, ZeroOneOneLayerPerStage) { run_parity({1, 1}); }
TEST(Parity, ZeroThreeOneLayerPerStage) { run_parity({3, 1}); }
TEST(Parity, ZeroTwoThreeLayersPerStage) { run_parity({2, 3}); }
TEST(Parity, ZeroThreeTwoLayersPerStage) { run_parity({3, 2}); }
// Every rank's 12 / world-size rows one row per micro-batch: the earlier
// micro-batches' gradients must survive the later ones, at world size 1 too.
TEST(Parity, ZeroThreeGradientAccumulation) { run_parity({3, 1, 1, 0}); }
TEST(Parity, MixtureOfExpertsZeroOne) { run_parity({1, 1, 0, 4}); }
TEST(Parity, MixtureOfExpertsZeroThreeAccumulating) { run_parity({3, 2, 1, 4}); }

}  // namespace
}  // namespace fsdp::stages
