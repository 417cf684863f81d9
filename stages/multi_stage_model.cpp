#include "stages/multi_stage_model.h"

#include <ATen/ATen.h>
#include <torch/csrc/autograd/autograd.h>

#include <stdexcept>

namespace fsdp::stages {

MultiStageModel::MultiStageModel(std::vector<std::unique_ptr<Layer>> layers,
                                 std::shared_ptr<ProcessGroup> group, MultiStageOptions options)
    : layers_(std::move(layers)), options_(options) {
  if (options_.layers_per_stage < 1) {
    throw std::invalid_argument("layers_per_stage must be at least 1, got " +
                                std::to_string(options_.layers_per_stage));
  }
  if (options_.zero_stage < 1 || options_.zero_stage > 3) {
    throw std::invalid_argument("zero_stage must be 1, 2 or 3, got " +
                                std::to_string(options_.zero_stage));
  }
  if (layers_.empty()) throw std::invalid_argument("a model needs at least one layer");
  for (std::size_t first = 0; first < layers_.size();
       first += static_cast<std::size_t>(options_.layers_per_stage)) {
    const std::size_t end =
        std::min(layers_.size(), first + static_cast<std::size_t>(options_.layers_per_stage));
    Stage stage;
    std::vector<ParameterSpec> specs;
    std::vector<std::size_t> counts;
    for (std::size_t l = first; l < end; ++l) {
      std::vector<ParameterSpec> layer_specs = layers_[l]->parameter_specs();
      counts.push_back(layer_specs.size());
      for (ParameterSpec& spec : layer_specs) specs.push_back(std::move(spec));
      stage.layers.push_back(layers_[l].get());
    }
    stage.first_parameter = specs.empty() ? "(none)" : specs.front().name;
    stage.fsdp = std::make_unique<Fsdp>("stage." + std::to_string(stages_.size()), std::move(specs),
                                        group, options_.fsdp);
    // Views come in layout order, which is declaration order: hand each layer its run.
    const std::vector<at::Tensor>& views = stage.fsdp->parameter_views();
    std::size_t next = 0;
    for (std::size_t k = 0; k < stage.layers.size(); ++k) {
      stage.layers[k]->bind(
          std::vector<at::Tensor>(views.begin() + static_cast<std::ptrdiff_t>(next),
                                  views.begin() + static_cast<std::ptrdiff_t>(next + counts[k])));
      next += counts[k];
    }
    stages_.push_back(std::move(stage));
  }
}

std::vector<Fsdp*> MultiStageModel::stages() {
  std::vector<Fsdp*> result;
  for (Stage& stage : stages_) result.push_back(stage.fsdp.get());
  return result;
}

void MultiStageModel::initialize_weights(std::uint64_t seed) {
  for (Stage& stage : stages_) stage.fsdp->initialize_weights(seed);
}

void MultiStageModel::zero_gradients() {
  for (Stage& stage : stages_) stage.fsdp->zero_gradient_buffer();
}

at::Tensor MultiStageModel::run_stage(Stage& stage, const at::Tensor& input) {
  stage.fsdp->restore_parameters();
  // The forward asserts the restored state (seed 000: never compute on zeros).
  stage.fsdp->assert_restored(stage.first_parameter);
  at::Tensor activation = input;
  for (Layer* layer : stage.layers) activation = layer->forward(activation);
  return activation;
}

double MultiStageModel::forward_backward(const at::Tensor& input, const LossFunction& loss) {
  const bool zero3 = options_.zero_stage == 3;
  std::vector<at::Tensor> inputs(stages_.size());
  std::vector<at::Tensor> outputs(stages_.size());
  for (std::size_t s = 0; s < stages_.size(); ++s) {
    // Stage boundaries: the next stage starts from a detached leaf, whose
    // gradient after that stage's backward is this stage's output gradient.
    inputs[s] = s == 0 ? input : outputs[s - 1].detach().requires_grad_(true);
    outputs[s] = run_stage(stages_[s], inputs[s]);
    if (zero3) stages_[s].fsdp->release();
  }
  const at::Tensor loss_value = loss(outputs.back());
  for (std::size_t s = stages_.size(); s-- > 0;) {
    Fsdp& fsdp = *stages_[s].fsdp;
    if (zero3) fsdp.restore_parameters();
    fsdp.assert_restored(stages_[s].first_parameter);
    if (s + 1 == stages_.size()) {
      torch::autograd::backward({loss_value});
    } else {
      torch::autograd::backward({outputs[s]}, {inputs[s + 1].grad()});
    }
    if (zero3) fsdp.release();
  }
  return loss_value.item<double>();
}

void MultiStageModel::reduce_gradients() {
  for (Stage& stage : stages_) stage.fsdp->reduce_gradients(GradientReduction::kAverage);
}

at::Tensor MultiStageModel::forward(const at::Tensor& input) {
  at::NoGradGuard no_grad;
  at::Tensor activation = input;
  for (Stage& stage : stages_) {
    activation = run_stage(stage, activation);
    if (options_.zero_stage == 3) stage.fsdp->release();
  }
  return activation;
}

}  // namespace fsdp::stages
