#include "fsdp/models/rms_norm.h"

#include <ATen/ExpandUtils.h>
#include <torch/csrc/autograd/custom_function.h>

#include <stdexcept>
#include <string>

namespace fsdp::models {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

at::Tensor reciprocal_root(const at::Tensor& x, double epsilon) {
  return at::rsqrt(x.square().mean({-1}, /*keepdim=*/true) + epsilon);
}

struct RmsNorm : torch::autograd::Function<RmsNorm> {
  static at::Tensor forward(AutogradContext* context, const at::Tensor& x, const at::Tensor& weight,
                            double epsilon) {
    const at::Tensor root = reciprocal_root(x, epsilon);
    context->save_for_backward({x, root, weight});
    return x * root * weight;
  }

  // What autograd runs for the expression, node by node (the formulas of
  // libtorch's derivatives: mul, rsqrt, mean, pow), broadcast gradients
  // summed to their operand's shape as its engine does.
  static variable_list backward(AutogradContext* context, variable_list output_gradients) {
    const variable_list saved = context->get_saved_variables();
    const at::Tensor& x = saved[0];
    const at::Tensor& root = saved[1];
    const at::Tensor& weight = saved[2];
    const at::Tensor& gradient = output_gradients[0];
    if (!gradient.defined()) return {at::Tensor(), at::Tensor(), at::Tensor()};
    // (x * root) * weight
    const at::Tensor weight_gradient = at::sum_to(gradient * (x * root), weight.sizes());
    const at::Tensor normalized_gradient = gradient * weight;
    // x * root
    const at::Tensor direct = normalized_gradient * root;
    const at::Tensor root_gradient = at::sum_to(normalized_gradient * x, root.sizes());
    // root = rsqrt(mean + epsilon); mean of x.square() over the last dimension
    const at::Tensor mean_gradient = -0.5 * root_gradient * root.pow(3);
    const at::Tensor square_gradient = mean_gradient.expand(x.sizes()) / x.size(-1);
    const at::Tensor through_square = square_gradient * (2.0 * x.pow(1.0));
    return {direct + through_square, weight_gradient, at::Tensor()};
  }
};

}  // namespace

at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double epsilon) {
  if (!x.defined() || !weight.defined() || x.dim() < 1 || weight.dim() != 1 ||
      weight.size(0) != x.size(-1)) {
    const auto describe = [](const at::Tensor& tensor) {
      return tensor.defined() ? c10::str(tensor.sizes()) : std::string("undefined");
    };
    throw std::invalid_argument("rms_norm: expected x [..., H] and weight [H], found x " +
                                describe(x) + " and weight " + describe(weight));
  }
  if (!at::GradMode::is_enabled() || !(x.requires_grad() || weight.requires_grad())) {
    return x * reciprocal_root(x, epsilon) * weight;
  }
  return RmsNorm::apply(x, weight, epsilon);
}

}  // namespace fsdp::models
