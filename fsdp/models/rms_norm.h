// RMSNorm as one autograd node that keeps its input, not its intermediates.
#pragma once

#include <ATen/ATen.h>

namespace fsdp::models {

// x * rsqrt(mean(x^2 over the last dimension) + epsilon) * weight, with
// `weight` of x's last dimension. The same operations in the same order as
// that expression, so the output is bitwise its output, and so are the
// gradients of x and weight where x has no other use (autograd adds the
// gradients of other uses to this node's in its own order).
//
// Why a node of its own: autograd keeps the normalised x (before the
// weight) until the backward, one activation-sized tensor per norm -- two
// per decoder layer -- beside x itself, which the next layer keeps anyway.
// This node keeps x and the per-row reciprocal root, and normalises again
// in its backward. Without a graph it is the plain expression.
at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double epsilon);

}  // namespace fsdp::models
