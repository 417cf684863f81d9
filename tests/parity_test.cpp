// Parity, the gold standard: the sharded runtime (multi-stage model, data
// parallel over the ranks, ShardedAdamW with global-norm clipping and the
// schedule) against plain unsharded libtorch (the same layers bound to
// ordinary tensors, the whole batch, torch::optim::AdamW), at world sizes 1-4:
// the matrix ZeRO 1/2/3 x prefetch off/on x dense/MoE x untied/tied, plus
// several layers per stage, gradient accumulation, shared buffers and stacked
// layers. The initial weights must be bitwise equal; per-step losses within
// 1e-5 relative for 20 steps (float32: the only differences are the order of
// the batch reductions across ranks).
#include <gtest/gtest.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/optim/adamw.h>

#include <ATen/ATen.h>

#include <cmath>
#include <functional>
#include <map>
#include <tuple>

#include "fsdp/inspector.h"
#include "fsdp/models/llama.h"
#include "fsdp/stages/learning_rate_schedule.h"
#include "fsdp/stages/multi_stage_model.h"
#include "fsdp/stages/sharded_adamw.h"
#include "fsdp/torch_interop.h"
#include "mpi_test_environment.h"

namespace fsdp::stages {
namespace {

constexpr std::uint64_t kSeed = 2024;
constexpr std::int64_t kGlobalBatch = 12;  // divisible by 1, 2, 3 and 4
constexpr std::int64_t kSequence = 8;
constexpr int kSteps = 20;

models::LlamaConfig tiny_llama(std::int64_t experts, bool tied, bool stacked) {
  models::LlamaConfig config;
  config.vocabulary = 32;
  config.hidden = 16;
  config.heads = 2;
  config.intermediate = 32;
  config.layers = 2;
  config.max_sequence = kSequence;
  config.experts = experts;
  config.experts_per_token = 2;
  config.tie_embeddings = tied;
  config.stacked_layers = stacked;
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
  int zero_stage = 1;
  int layers_per_stage = 1;
  std::int64_t micro_batch_rows = 0;  // gradient accumulation: rows per micro-batch (0: all)
  std::int64_t experts = 0;           // 0: dense MLP; otherwise mixture of experts
  bool prefetch = false;
  bool tied = false;  // output head = input embedding
  int shared_weight_buffers = 0;
  int shared_gradient_buffers = 0;
  bool stacked = false;  // decoder layers as [L, ...] parameters
  // Mixed precision: float32 master shards, bfloat16 buffers (compute),
  // gradients reduced in float32. Compared with the float32 reference at a
  // bfloat16 tolerance instead of 1e-5.
  bool bfloat16 = false;

  std::string describe() const {
    return "zero " + std::to_string(zero_stage) + ", layers per stage " +
           std::to_string(layers_per_stage) + ", micro-batch rows " +
           std::to_string(micro_batch_rows) + ", experts " + std::to_string(experts) +
           ", prefetch " + std::to_string(prefetch) + ", tied " + std::to_string(tied) +
           ", shared weight/gradient buffers " + std::to_string(shared_weight_buffers) + "/" +
           std::to_string(shared_gradient_buffers) + ", stacked " + std::to_string(stacked) +
           ", bfloat16 " + std::to_string(bfloat16);
  }
};

void run_parity(const ParityCase& parity) {
  SCOPED_TRACE(parity.describe());
  const models::LlamaConfig config = tiny_llama(parity.experts, parity.tied, parity.stacked);
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
  std::map<std::string, at::Tensor> by_name;  // a tied parameter is one tensor
  for (auto& layer : reference_layers) {
    std::vector<at::Tensor> bound;
    for (const ParameterSpec& spec : layer->parameter_specs()) {
      auto [entry, inserted] = by_name.try_emplace(spec.name);
      if (inserted) {
        entry->second = initial_tensor(spec).set_requires_grad(true);
        reference_parameters.push_back(entry->second);
        reference_specs.push_back(spec);
        (spec.shape.size() >= 2 ? decayed : not_decayed).push_back(entry->second);
      }
      bound.push_back(entry->second);
    }
    layer->bind(bound);
  }
  EXPECT_EQ(by_name.count("head.weight"), parity.tied ? 0u : 1u);
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
  options.prefetch = parity.prefetch;
  options.shared_weight_buffers = parity.shared_weight_buffers;
  options.shared_gradient_buffers = parity.shared_gradient_buffers;
  options.fsdp.alignment = 8;
  if (parity.bfloat16) options.fsdp.compute_dtype = ElementType::kBFloat16;
  const double tolerance = parity.bfloat16 ? 3e-2 : 1e-5;
  MultiStageModel model(models::build_llama_layers(config), group, options);
  model.initialize_weights(kSeed);
  EXPECT_EQ(model.tied_stage() != nullptr, parity.tied);
  ShardedAdamW optimizer(model.stages(), adam);

  if (parity.experts > 0) {
    // The experts really are fused 3-D parameters in the transformers-5 layout.
    bool found = false;
    const std::string prefix = parity.stacked ? "decoder." : "decoder.0.";
    std::vector<std::int64_t> gate_up = {parity.experts, 2 * config.intermediate, config.hidden};
    std::vector<std::int64_t> down = {parity.experts, config.hidden, config.intermediate};
    if (parity.stacked) {
      gate_up.insert(gate_up.begin(), config.layers);
      down.insert(down.begin(), config.layers);
    }
    for (Fsdp* stage : model.stages()) {
      const FlatLayout& layout = stage->layout();
      if (!layout.contains(prefix + "mlp.experts.gate_up_proj")) continue;
      found = true;
      EXPECT_EQ(layout.parameter(prefix + "mlp.experts.gate_up_proj").shape, gate_up);
      EXPECT_EQ(layout.parameter(prefix + "mlp.experts.down_proj").shape, down);
    }
    EXPECT_TRUE(found) << "no fused expert parameters in the model";
  }

  // Bitwise-identical initial weights, whatever the world size.
  std::size_t parameter_count = 0;
  for (Fsdp* stage : model.stages()) {
    for (const ParameterSlot& slot : stage->layout().parameters()) {
      ++parameter_count;
      EXPECT_TRUE(read_parameter(*stage, slot.name)
                      .equal(initial_tensor({slot.name, slot.shape, slot.dtype, slot.init})))
          << slot.name;
    }
  }
  EXPECT_EQ(parameter_count, reference_parameters.size());

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
            return next_token_loss(logits.to(at::kFloat), micro_targets) /
                   static_cast<double>(micro_batches);
          });
    }
    model.reduce_gradients();
    const double norm = optimizer.step(learning_rate);
    std::vector<double> loss = {local_loss};
    testing::runtime().host_group()->all_reduce(host_span(loss), ReduceOp::kAverage);

    const double expected = reference_loss.item<double>();
    EXPECT_NEAR(loss[0], expected, tolerance * std::abs(expected)) << "step " << step;
    if (step == 1) first_loss = expected;
    last_loss = expected;
    EXPECT_NEAR(norm, std::sqrt(squared_norm),
                (parity.bfloat16 ? 0.1 : 1e-4) * std::sqrt(squared_norm))
        << "step " << step;
  }
  // Prefetch really ran ahead (or, with one shared weight buffer, stepped aside).
  const std::int64_t prefetched = model.communication_statistics().prefetched_restores;
  if (!parity.prefetch || parity.shared_weight_buffers == 1) {
    EXPECT_EQ(prefetched, 0);
  } else if (parity.zero_stage == 3 && model.schedule_stage_count() > 1) {
    EXPECT_GT(prefetched, 0);
  }
  // The comparison means something only if training moved the loss.
  EXPECT_LT(last_loss, 0.8 * first_loss) << "first " << first_loss << ", last " << last_loss;
  if (rank == 0)
    std::cout << "[ parity   ] loss " << first_loss << " -> " << last_loss << std::endl;
}

// The matrix: ZeRO 1/2/3 x prefetch x dense/MoE x untied/tied, one layer per
// stage (the most stage boundaries; with tied embeddings stage 0 has no
// parameters of its own).
class ParityMatrix : public ::testing::TestWithParam<std::tuple<int, bool, bool, bool>> {};

TEST_P(ParityMatrix, MatchesUnshardedLibtorch) {
  ParityCase parity;
  parity.zero_stage = std::get<0>(GetParam());
  parity.prefetch = std::get<1>(GetParam());
  parity.experts = std::get<2>(GetParam()) ? 4 : 0;
  parity.tied = std::get<3>(GetParam());
  run_parity(parity);
}

INSTANTIATE_TEST_SUITE_P(ZeroPrefetchMoeTied, ParityMatrix,
                         ::testing::Combine(::testing::Values(1, 2, 3), ::testing::Bool(),
                                            ::testing::Bool(), ::testing::Bool()));

ParityCase with(ParityCase parity, std::function<void(ParityCase&)> change) {
  change(parity);
  return parity;
}

TEST(Parity, ZeroTwoThreeLayersPerStage) {
  run_parity(with({}, [](ParityCase& p) { p.zero_stage = 2, p.layers_per_stage = 3; }));
}
TEST(Parity, ZeroThreeTwoLayersPerStagePrefetch) {
  run_parity(
      with({}, [](ParityCase& p) { p.zero_stage = 3, p.layers_per_stage = 2, p.prefetch = true; }));
}
// Every rank's 12 / world-size rows one row per micro-batch: the earlier
// micro-batches' gradients must survive the later ones, at world size 1 too.
TEST(Parity, ZeroOneGradientAccumulation) {
  run_parity(with({}, [](ParityCase& p) { p.zero_stage = 1, p.micro_batch_rows = 1; }));
}
TEST(Parity, ZeroThreeGradientAccumulation) {
  run_parity(with({}, [](ParityCase& p) { p.zero_stage = 3, p.micro_batch_rows = 1; }));
}
TEST(Parity, MixtureOfExpertsZeroThreeAccumulatingTied) {
  run_parity(with({}, [](ParityCase& p) {
    p.zero_stage = 3, p.layers_per_stage = 2, p.micro_batch_rows = 1, p.experts = 4, p.tied = true;
  }));
}
// ZeRO-3 with 2 shared weight buffers and 2 shared gradient buffers, with and
// without prefetch (which alternates between the two).
TEST(Parity, ZeroThreeTwoSharedBuffers) {
  run_parity(with({}, [](ParityCase& p) {
    p.zero_stage = 3, p.shared_weight_buffers = 2, p.shared_gradient_buffers = 2;
  }));
}
TEST(Parity, ZeroThreeTwoSharedBuffersPrefetchAccumulating) {
  run_parity(with({}, [](ParityCase& p) {
    p.zero_stage = 3, p.shared_weight_buffers = 2, p.shared_gradient_buffers = 2;
    p.prefetch = true, p.micro_batch_rows = 1, p.tied = true;
  }));
}
// One shared weight buffer: prefetch can never start (the next stage's buffer
// is the current one) and must step aside rather than overwrite it.
TEST(Parity, ZeroThreeOneSharedBufferPrefetchStepsAside) {
  run_parity(with({}, [](ParityCase& p) {
    p.zero_stage = 3, p.shared_weight_buffers = 1, p.shared_gradient_buffers = 1;
    p.prefetch = true;
  }));
}
TEST(Parity, ZeroTwoOneSharedGradientBuffer) {
  run_parity(with({}, [](ParityCase& p) { p.zero_stage = 2, p.shared_gradient_buffers = 1; }));
}
TEST(Parity, MixedPrecisionBFloat16ZeroThreePrefetch) {
  run_parity(with({}, [](ParityCase& p) {
    p.zero_stage = 3, p.prefetch = true, p.shared_weight_buffers = 2, p.bfloat16 = true;
  }));
}
TEST(Parity, MixedPrecisionBFloat16MixtureOfExpertsTiedAccumulating) {
  run_parity(with({}, [](ParityCase& p) {
    p.zero_stage = 2, p.experts = 4, p.tied = true, p.micro_batch_rows = 1, p.bfloat16 = true;
  }));
}
TEST(Parity, StackedLayers) {
  run_parity(
      with({}, [](ParityCase& p) { p.zero_stage = 3, p.stacked = true, p.prefetch = true; }));
}
TEST(Parity, StackedMixtureOfExpertsTied) {
  run_parity(with(
      {}, [](ParityCase& p) { p.zero_stage = 1, p.stacked = true, p.experts = 4, p.tied = true; }));
}

}  // namespace
}  // namespace fsdp::stages
