#include "fsdp/stages/cross_entropy.h"

#include <torch/csrc/autograd/custom_function.h>

#include <stdexcept>
#include <string>

namespace fsdp::stages {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// "[6, 9] Long", for messages.
std::string describe(const at::Tensor& tensor) {
  return tensor.defined() ? c10::str(tensor.sizes(), " ", tensor.scalar_type())
                          : std::string("an undefined tensor");
}

void check_inputs(const at::Tensor& logits, const at::Tensor& targets, std::int64_t ignore_index) {
  const std::string where = "next_token_cross_entropy: ";
  if (!logits.defined() || logits.dim() != 2 || !at::isFloatingType(logits.scalar_type())) {
    throw std::invalid_argument(
        where + "expected logits of shape [rows, vocabulary] and a floating type, found " +
        describe(logits));
  }
  if (!targets.defined() || targets.scalar_type() != at::kLong || targets.dim() != 1 ||
      targets.size(0) != logits.size(0)) {
    throw std::invalid_argument(where + "expected int64 targets of shape [" +
                                std::to_string(logits.size(0)) +
                                "] (one per row of the logits), found " + describe(targets));
  }
  const std::int64_t vocabulary = logits.size(1);
  const at::Tensor outside = (targets.lt(0) | targets.ge(vocabulary)) & targets.ne(ignore_index);
  if (outside.any().item<bool>()) {  // one host sync; the caller reads the loss next anyway
    const std::int64_t row = outside.nonzero()[0][0].item<std::int64_t>();
    throw std::invalid_argument(
        where + "target " + std::to_string(targets[row].item<std::int64_t>()) + " of row " +
        std::to_string(row) + " is outside the vocabulary [0, " + std::to_string(vocabulary) +
        ") and is not the ignore index " + std::to_string(ignore_index));
  }
}

// The loss, and the softmax in `softmax` when it is not null. The softmax is
// built in one rows x vocabulary buffer (shift, exp, normalise, all in place),
// so no second temporary of that size exists at any moment; the loss takes
// the same path with or without it, so both give the same bits.
at::Tensor loss_and_softmax(const at::Tensor& logits, const at::Tensor& targets,
                            std::int64_t ignore_index, at::Tensor* softmax) {
  const at::Tensor scores = logits.to(at::kFloat);
  const at::Tensor row_max = std::get<0>(scores.max(1, /*keepdim=*/true));
  at::Tensor exponentials = scores - row_max;
  exponentials.exp_();
  const at::Tensor sums = exponentials.sum(1, /*keepdim=*/true);
  const at::Tensor log_normalizer = (row_max + sums.log()).squeeze(1);
  const at::Tensor kept = targets.ne(ignore_index);
  const at::Tensor safe_targets = targets.masked_fill(~kept, 0).unsqueeze(1);
  const at::Tensor picked = scores.gather(1, safe_targets).squeeze(1);
  const at::Tensor weights = kept.to(at::kFloat);
  const at::Tensor count = weights.sum();
  const at::Tensor loss = ((log_normalizer - picked) * weights).sum() / count;
  if (softmax) {
    exponentials.div_(sums);
    // (softmax - one-hot) / count on the kept rows, zero on the ignored.
    exponentials.scatter_add_(1, safe_targets, -weights.unsqueeze(1));
    exponentials.mul_((weights / count).unsqueeze(1));
    *softmax = exponentials;
  }
  return loss;
}

struct CrossEntropyWithEarlyGradient : torch::autograd::Function<CrossEntropyWithEarlyGradient> {
  static at::Tensor forward(AutogradContext* context, const at::Tensor& logits,
                            const at::Tensor& targets, std::int64_t ignore_index) {
    at::Tensor gradient;
    at::Tensor loss = loss_and_softmax(logits, targets, ignore_index, &gradient);
    // In saved_data, not save_for_backward: backward moves it out, so the
    // graph (held by the loss until the caller drops it) no longer keeps it.
    context->saved_data["gradient"] = gradient;
    context->saved_data["logits_type"] = static_cast<std::int64_t>(logits.scalar_type());
    return loss;
  }

  static variable_list backward(AutogradContext* context, variable_list output_gradients) {
    const auto found = context->saved_data.find("gradient");
    if (found == context->saved_data.end()) {
      throw std::logic_error(
          "next_token_cross_entropy: a second backward through the same loss; its gradient was "
          "handed on by the first (differentiate it once, without retain_graph)");
    }
    at::Tensor gradient = found->second.toTensor();
    context->saved_data.erase(found);
    const auto logits_type =
        static_cast<at::ScalarType>(context->saved_data["logits_type"].toInt());
    if (!output_gradients[0].defined()) return {at::Tensor(), at::Tensor(), at::Tensor()};
    gradient.mul_(output_gradients[0]);
    return {gradient.to(logits_type), at::Tensor(), at::Tensor()};
  }
};

}  // namespace

at::Tensor next_token_cross_entropy(const at::Tensor& logits, const at::Tensor& targets,
                                    std::int64_t ignore_index) {
  check_inputs(logits, targets, ignore_index);
  if (!at::GradMode::is_enabled() || !logits.requires_grad()) {
    return loss_and_softmax(logits, targets, ignore_index, nullptr);
  }
  return CrossEntropyWithEarlyGradient::apply(logits, targets, ignore_index);
}

}  // namespace fsdp::stages
