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

// ZeRO-`zero_stage` as the benchmarks run it: the library's default buffers
// (under ZeRO-3, 2 shared weight buffers and 1 shared gradient buffer), what
// a user gets without tuning.
inline stages::MultiStageOptions bench_model_options(int zero_stage) {
  stages::MultiStageOptions options;
  options.zero_stage = zero_stage;
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
