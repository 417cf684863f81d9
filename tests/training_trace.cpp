#include "training_trace.h"

#include <gtest/gtest.h>

#include "fsdp/stages/sharded_adamw.h"
#include "mpi_test_environment.h"

namespace fsdp::stages::testing_trace {

models::LlamaConfig config_for(const Case& c) {
  models::LlamaConfig config;
  config.vocabulary = 32;
  config.hidden = 16;
  config.heads = 2;
  config.kv_heads = 1;
  config.intermediate = 32;
  config.layers = 3;
  config.max_sequence = kSequence;
  config.experts = c.experts;
  config.experts_per_token = 2;
  config.router_aux_loss_coefficient = c.experts > 0 ? 0.05 : 0;
  config.router_z_loss_coefficient = c.experts > 0 ? 0.01 : 0;
  config.tie_embeddings = c.tied;
  config.stacked_layers = c.stacked;
  return config;
}

Trace train(const Case& c, ActivationCheckpointing mode) {
  auto counting = std::make_shared<CountingGroup>(testing::runtime().process_group());
  MultiStageOptions options;
  options.zero_stage = c.zero_stage;
  options.prefetch = c.prefetch;
  options.layers_per_stage = c.layers_per_stage;
  options.shared_weight_buffers = c.shared_buffers;
  options.shared_gradient_buffers = c.shared_buffers;
  options.activation_checkpointing = mode;
  options.asynchronous_reduction = c.asynchronous_reduction;
  options.fsdp.alignment = 8;
  if (c.bfloat16) options.fsdp.compute_dtype = ElementType::kBFloat16;
  const models::LlamaConfig config = config_for(c);
  MultiStageModel model(models::build_llama_layers(config), counting, options);
  model.initialize_weights(7);
  ShardedAdamWOptions adam;
  adam.max_gradient_norm = 1.0;
  ShardedAdamW optimizer(model.stages(), adam);

  const std::int64_t local = kGlobalBatch / counting->size();
  const std::int64_t rows = local / c.micro_batches;
  Trace trace;
  trace.activation_estimate = model.memory(&optimizer, rows, kSequence).activations;
  for (int step = 1; step <= kSteps; ++step) {
    // Deterministic tokens that differ from step to step.
    const at::Tensor tokens =
        (at::arange(kGlobalBatch * (kSequence + 1), at::kLong).view({kGlobalBatch, -1}) *
             (step + 2) +
         step)
            .remainder(config.vocabulary);
    model.zero_gradients();
    double loss = 0;
    for (std::int64_t micro = 0; micro < c.micro_batches; ++micro) {
      const at::Tensor rows_tokens =
          tokens.narrow(0, counting->rank() * local + micro * rows, rows);
      const at::Tensor targets = rows_tokens.narrow(1, 1, kSequence);
      const double share = 1.0 / static_cast<double>(c.micro_batches);
      loss += model.forward_backward(
          rows_tokens.narrow(1, 0, kSequence),
          [&](const at::Tensor& logits) {
            return at::cross_entropy_loss(logits.reshape({-1, config.vocabulary}).to(at::kFloat),
                                          targets.reshape({-1})) *
                   share;
          },
          share);
    }
    model.reduce_gradients();
    const AuxiliaryTotals auxiliary = model.take_auxiliary_totals();
    trace.losses.push_back(loss);
    trace.auxiliary_losses.push_back(auxiliary.loss);
    std::vector<at::Tensor> counts;
    for (const auto& [layer, tokens_per_expert] : auxiliary.expert_tokens) {
      counts.push_back(tokens_per_expert.reshape({-1}));
    }
    trace.expert_tokens.push_back(counts.empty() ? at::Tensor() : at::cat(counts));
    trace.gradient_norms.push_back(optimizer.step(1e-2));
  }
  for (Fsdp* stage : model.stages()) trace.final_shards.push_back(stage->weight_shard().clone());
  trace.all_gathers = counting->all_gathers;
  trace.reduce_scatters = counting->reduce_scatters;
  trace.all_reduces = counting->all_reduces;
  trace.reduce_scatter_polls = counting->reduce_scatter_polls;
  return trace;
}

void expect_same_trace(const Trace& expected, const Trace& actual) {
  for (int step = 0; step < kSteps; ++step) {
    // Bitwise: EXPECT_EQ on doubles, not EXPECT_NEAR.
    EXPECT_EQ(actual.losses[step], expected.losses[step]) << "step " << step + 1;
    EXPECT_EQ(actual.auxiliary_losses[step], expected.auxiliary_losses[step])
        << "step " << step + 1;
    EXPECT_EQ(actual.gradient_norms[step], expected.gradient_norms[step]) << "step " << step + 1;
    ASSERT_EQ(actual.expert_tokens[step].defined(), expected.expert_tokens[step].defined());
    if (expected.expert_tokens[step].defined()) {
      EXPECT_TRUE(actual.expert_tokens[step].equal(expected.expert_tokens[step]));
    }
  }
  ASSERT_EQ(actual.final_shards.size(), expected.final_shards.size());
  for (std::size_t s = 0; s < expected.final_shards.size(); ++s) {
    EXPECT_TRUE(actual.final_shards[s].equal(expected.final_shards[s])) << "stage " << s;
  }
  EXPECT_EQ(actual.all_gathers, expected.all_gathers);
  EXPECT_EQ(actual.reduce_scatters, expected.reduce_scatters);
  EXPECT_EQ(actual.all_reduces, expected.all_reduces);
}

}  // namespace fsdp::stages::testing_trace
