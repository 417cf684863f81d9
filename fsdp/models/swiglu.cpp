#include "fsdp/models/swiglu.h"

#include <torch/csrc/autograd/custom_function.h>

#include <stdexcept>
#include <string>
#include <vector>

namespace fsdp::models {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

at::Tensor first_half(const at::Tensor& tensor) {
  return tensor.narrow(-1, 0, tensor.size(-1) / 2);
}
at::Tensor second_half(const at::Tensor& tensor) {
  const std::int64_t half = tensor.size(-1) / 2;
  return tensor.narrow(-1, half, half);
}

struct SwiGluDown : torch::autograd::Function<SwiGluDown> {
  // `down_bias` is an empty placeholder when `has_bias` is false: libtorch
  // 1.13's apply() cannot take an undefined tensor argument.
  static at::Tensor forward(AutogradContext* context, const at::Tensor& gate_up,
                            const at::Tensor& down_weight, const at::Tensor& down_bias,
                            bool has_bias) {
    context->save_for_backward({gate_up, down_weight});
    context->saved_data["has_bias"] = has_bias;
    return at::linear(at::silu(first_half(gate_up)) * second_half(gate_up), down_weight,
                      has_bias ? down_bias : at::Tensor());
  }

  // What autograd runs for the expression, node by node (libtorch 1.13's
  // formulas): the projection's matrix products, then the product's and
  // silu's, with the product and silu's output computed again.
  static variable_list backward(AutogradContext* context, variable_list output_gradients) {
    const variable_list saved = context->get_saved_variables();
    const at::Tensor& gate_up = saved[0];
    const at::Tensor& down_weight = saved[1];
    const at::Tensor& output_gradient = output_gradients[0];
    if (!output_gradient.defined()) return {at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
    const std::int64_t hidden = down_weight.size(0);
    const std::int64_t intermediate = down_weight.size(1);
    const at::Tensor gate = first_half(gate_up);
    const at::Tensor up = second_half(gate_up);
    const at::Tensor gradient_2d = output_gradient.reshape({-1, hidden});

    const at::Tensor activated = at::silu(gate);
    // The projection: weight gradient from the product, input gradient from the weight.
    const at::Tensor weight_gradient =
        gradient_2d.t().mm((activated * up).reshape({-1, intermediate}));
    const at::Tensor bias_gradient =
        context->saved_data["has_bias"].toBool() ? gradient_2d.sum(0) : at::Tensor();
    std::vector<std::int64_t> shape = gate_up.sizes().vec();
    shape.back() = intermediate;
    const at::Tensor product_gradient = gradient_2d.mm(down_weight).view(shape);

    // Both halves' gradients straight into one tensor (autograd would concatenate them).
    at::Tensor gate_up_gradient = at::empty_like(gate_up, at::MemoryFormat::Contiguous);
    at::Tensor up_gradient = second_half(gate_up_gradient);
    at::mul_out(up_gradient, product_gradient, activated);
    at::Tensor gate_gradient = first_half(gate_up_gradient);
    at::silu_backward_out(gate_gradient, product_gradient * up, gate);
    return {gate_up_gradient, weight_gradient, bias_gradient, at::Tensor()};
  }
};

void check_shapes(const at::Tensor& gate_up, const at::Tensor& down_weight,
                  const at::Tensor& down_bias) {
  const auto describe = [](const at::Tensor& tensor) {
    return tensor.defined() ? c10::str(tensor.sizes()) : std::string("undefined");
  };
  const bool fits =
      gate_up.defined() && down_weight.defined() && gate_up.dim() >= 1 && down_weight.dim() == 2 &&
      gate_up.size(-1) == 2 * down_weight.size(1) &&
      (!down_bias.defined() || (down_bias.dim() == 1 && down_bias.size(0) == down_weight.size(0)));
  if (!fits) {
    throw std::invalid_argument(
        "swiglu_down: expected gate_up [..., 2 I], down_weight [H, I] and down_bias [H] or "
        "none, found gate_up " +
        describe(gate_up) + ", down_weight " + describe(down_weight) + ", down_bias " +
        describe(down_bias));
  }
}

}  // namespace

at::Tensor swiglu_down(const at::Tensor& gate_up, const at::Tensor& down_weight,
                       const at::Tensor& down_bias) {
  check_shapes(gate_up, down_weight, down_bias);
  const bool graph =
      at::GradMode::is_enabled() && (gate_up.requires_grad() || down_weight.requires_grad() ||
                                     (down_bias.defined() && down_bias.requires_grad()));
  if (!graph) {
    return at::linear(at::silu(first_half(gate_up)) * second_half(gate_up), down_weight, down_bias);
  }
  if (!down_bias.defined()) {
    return SwiGluDown::apply(gate_up, down_weight, at::empty({0}, down_weight.options()), false);
  }
  return SwiGluDown::apply(gate_up, down_weight, down_bias, true);
}

}  // namespace fsdp::models
