#include "fsdp/models/stack_slice.h"

#include <torch/csrc/autograd/custom_function.h>
#include <torch/csrc/autograd/grad_mode.h>

#include <stdexcept>

namespace fsdp::models {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

struct StackSlice : torch::autograd::Function<StackSlice> {
  static at::Tensor forward(AutogradContext* context, const at::Tensor& stacked,
                            std::int64_t index) {
    // In saved_data, not save_for_backward: the node needs the leaf, to reach
    // its .grad, not its values, which a restore may rewrite in between.
    context->saved_data["stacked"] = stacked;
    context->saved_data["index"] = index;
    return stacked.select(0, index);
  }

  static variable_list backward(AutogradContext* context, variable_list output_gradients) {
    if (at::GradMode::is_enabled()) {
      throw std::logic_error(
          "stack_slice: a backward with create_graph: the slice's gradient is accumulated into "
          "the stack's .grad in place, which is not differentiable");
    }
    const at::Tensor& gradient = output_gradients[0];
    if (gradient.defined()) {
      at::Tensor stacked = context->saved_data["stacked"].toTensor();
      at::Tensor& accumulated = stacked.mutable_grad();
      if (!accumulated.defined())
        accumulated = at::zeros_like(stacked, at::MemoryFormat::Contiguous);
      accumulated.select(0, context->saved_data["index"].toInt()).add_(gradient);
    }
    return {at::Tensor(), at::Tensor()};
  }
};

}  // namespace

at::Tensor stack_slice(const at::Tensor& stacked, std::int64_t index) {
  // A non-leaf passes its gradient on rather than keeping it: select().
  if (!at::GradMode::is_enabled() || !stacked.requires_grad() || !stacked.is_leaf()) {
    return stacked.select(0, index);
  }
  return StackSlice::apply(stacked, index);
}

}  // namespace fsdp::models
