// One runtime configuration under measurement, shared by the fsdp-bench
// cases that train: a Llama in a MultiStageModel, its AdamW over the shards,
// and one training step whose loss and gradient norm are kept.
#pragma once

#include <ATen/ATen.h>

#include <memory>
#include <vector>

#include "fsdp/launch/runtime.h"
#include "fsdp/models/llama.h"
#include "fsdp/stages/multi_stage_model.h"
#include "fsdp/stages/sharded_adamw.h"

namespace fsdp::bench {

// ZeRO-`zero_stage` as the benchmarks run it: ZeRO-3 with 2 shared weight
// and 2 shared gradient buffers, so that a rank holds its shards plus four
// stage buffers.
inline stages::MultiStageOptions bench_model_options(int zero_stage) {
  stages::MultiStageOptions options;
  options.zero_stage = zero_stage;
  if (zero_stage == 3) {
    options.shared_weight_buffers = 2;
    options.shared_gradient_buffers = 2;
  }
  return options;
}

struct BenchTrainee {
  std::unique_ptr<stages::MultiStageModel> model;
  std::unique_ptr<stages::ShardedAdamW> optimizer;
  double learning_rate;
  std::vector<double> losses, norms;  // one per step

  BenchTrainee(const models::LlamaConfig& config, launch::Runtime& runtime,
               const stages::MultiStageOptions& options, double learning_rate)
      : learning_rate(learning_rate) {
    model = std::make_unique<stages::MultiStageModel>(models::build_llama_layers(config),
                                                      runtime.process_group(), options);
    model->initialize_weights(1);
    optimizer =
        std::make_unique<stages::ShardedAdamW>(model->stages(), stages::ShardedAdamWOptions{});
  }

  void step(const at::Tensor& inputs, const at::Tensor& targets) {
    model->zero_gradients();
    losses.push_back(model->forward_backward(inputs, [&](const at::Tensor& logits) {
      return at::cross_entropy_loss(logits.reshape({-1, logits.size(-1)}), targets.reshape({-1}));
    }));
    model->reduce_gradients();
    norms.push_back(optimizer->step(learning_rate));
  }
};

}  // namespace fsdp::bench
