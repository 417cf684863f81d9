// Adopting an existing torch::nn module as a Layer: its parameters move into
// the flat layout of the stage it lands in, and the module computes on views
// of that stage's buffer from then on.
//
// This is the higher-memory path. The module is first built in full on every
// rank (its constructor allocates and initialises every parameter), and its
// original values are kept until MultiStageModel::initialize_weights() has
// copied each rank's part into the shards. Declaring parameters through
// Layer::parameter_specs() never allocates the whole model and is what large
// models should use; adoption is for existing modules and small pieces.
//
// What adoption does to the module: each parameter is re-pointed (Tensor::set_)
// at its view of the stage's weight buffer, and its .grad() at its view of the
// gradient buffer. The module's own forward then reads the restored weights
// and autograd accumulates into the flat gradient buffer, as for declared
// layers. A stage on a GPU works too: the CPU parameters are re-pointed at
// device views without a copy, and buffers registered with register_buffer()
// (running statistics, masks) are moved to the stage's device when bound.
// The module must not be moved to another device or dtype afterwards.
#pragma once

#include <torch/nn/module.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "fsdp/stages/layer.h"

namespace fsdp::stages {

class AdoptedModule final : public Layer {
 public:
  using Forward = std::function<at::Tensor(const at::Tensor&)>;

  // `prefix` + the module's own parameter names ("block.0." + "weight") name
  // the parameters in the layout; `forward` runs the module (for a
  // ModuleHolder: [m = holder](const at::Tensor& x) mutable { return m->forward(x); }).
  // Throws std::invalid_argument for a parameter that is not float32 on the CPU
  // or not contiguous, naming it.
  AdoptedModule(std::string prefix, std::shared_ptr<torch::nn::Module> module, Forward forward);

  std::vector<ParameterSpec> parameter_specs() const override;
  void bind(std::vector<at::Tensor> parameters) override;
  at::Tensor forward(const at::Tensor& input) override { return forward_(input); }
  // The module's values; std::logic_error once released (a second initialize_weights()).
  at::Tensor initial_value(std::size_t index) const override;
  void release_initial_values() override;

  torch::nn::Module& module() { return *module_; }

 private:
  void move_buffers_to(const c10::Device& device);

  std::string prefix_;
  std::shared_ptr<torch::nn::Module> module_;
  Forward forward_;
  std::vector<std::string> names_;
  std::vector<at::Tensor> originals_;  // the module's values until they are in the shards
  bool released_ = false;
};

}  // namespace fsdp::stages
