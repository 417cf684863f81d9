#include "fsdp/stages/adopted_module.h"

#include <ATen/ATen.h>

#include <stdexcept>

namespace fsdp::stages {

AdoptedModule::AdoptedModule(std::string prefix, std::shared_ptr<torch::nn::Module> module,
                             Forward forward)
    : prefix_(std::move(prefix)), module_(std::move(module)), forward_(std::move(forward)) {
  if (!module_) throw std::invalid_argument("adopting '" + prefix_ + "': no module given");
  for (const auto& item : module_->named_parameters(/*recurse=*/true)) {
    const at::Tensor& value = item.value();
    if (value.scalar_type() != at::kFloat || !value.device().is_cpu() || !value.is_contiguous()) {
      throw std::invalid_argument("adopting '" + prefix_ + "': parameter '" + item.key() + "' is " +
                                  c10::toString(value.scalar_type()) + " on " +
                                  value.device().str() +
                                  "; adoption takes contiguous float32 CPU parameters (the stage "
                                  "decides the compute dtype and device)");
    }
    names_.push_back(item.key());
    originals_.push_back(value.detach());
  }
}

std::vector<ParameterSpec> AdoptedModule::parameter_specs() const {
  std::vector<ParameterSpec> specs;
  for (std::size_t i = 0; i < names_.size(); ++i) {
    // The initialiser is never used: initial_value() supplies the module's values.
    specs.push_back({prefix_ + names_[i], module_->named_parameters()[names_[i]].sizes().vec(),
                     ElementType::kFloat32, ParameterInit::zeros()});
  }
  return specs;
}

void AdoptedModule::bind(std::vector<at::Tensor> parameters) {
  if (parameters.size() != names_.size()) {
    throw std::invalid_argument("adopting '" + prefix_ + "': bound to " +
                                std::to_string(parameters.size()) + " tensors for " +
                                std::to_string(names_.size()) + " parameters");
  }
  auto named = module_->named_parameters(/*recurse=*/true);
  at::NoGradGuard no_grad;
  if (!parameters.empty()) move_buffers_to(parameters.front().device());
  for (std::size_t i = 0; i < names_.size(); ++i) {
    at::Tensor parameter = named[names_[i]];
    const at::Tensor& view = parameters[i];
    // ATen's set_() keeps a tensor on its device: a CPU parameter cannot
    // alias a CUDA view. Give it an empty tensor on the view's device first
    // (no copy: the values reach the shards through initial_value()).
    if (parameter.device() != view.device()) {
      parameter.set_data(at::empty({0}, view.options().requires_grad(false)));
    }
    // The module's tensor now aliases the view's memory; its gradient is the
    // view's gradient (a view of the gradient buffer).
    parameter.set_(view.variable_data());
    if (view.grad().defined()) parameter.mutable_grad() = view.grad();
  }
}

void AdoptedModule::move_buffers_to(const c10::Device& device) {
  // Buffers (running statistics, masks) are not parameters: they stay the
  // module's own and follow the stage's device.
  for (const auto& item : module_->named_buffers(/*recurse=*/true)) {
    at::Tensor buffer = item.value();
    if (buffer.defined() && buffer.device() != device) buffer.set_data(buffer.to(device));
  }
}

at::Tensor AdoptedModule::initial_value(std::size_t index) const {
  if (released_) {
    throw std::logic_error("adopting '" + prefix_ +
                           "': the module's values were already written to the shards and freed; "
                           "initialize_weights() runs once on a model with adopted modules");
  }
  return originals_.at(index);
}

void AdoptedModule::release_initial_values() {
  originals_.clear();
  released_ = true;
}

}  // namespace fsdp::stages
