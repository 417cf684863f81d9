// The SwiGLU MLP's second half as one autograd node that keeps only its input.
#pragma once

#include <ATen/ATen.h>

namespace fsdp::models {

// down(silu(gate) * up) + down_bias, where gate and up are the two halves of
// `gate_up`'s last dimension ([..., 2 I]; what the MLP's first projection
// returns), `down_weight` is [H, I] and `down_bias` [H] or undefined. The
// same operations in the same order as
//   at::linear(at::silu(gate) * up, down_weight, down_bias)
// so the output is bitwise that expression's, and so are the gradients
// without a bias (with one, the bias gradient may round differently).
//
// Why a node of its own: autograd would keep, until the backward, `gate_up`
// (which silu and the product need), silu's output and the product (which
// the down projection needs) -- 4 I values per token, the largest share of a
// decoder layer's activations. This node keeps `gate_up` alone (2 I) and
// computes the product again in its backward, which is element-wise and
// cheap beside the projections; its backward also writes both halves'
// gradients into one [..., 2 I] tensor, where autograd would concatenate
// two. Without a graph (no grad mode, or nothing requires grad) it is the
// plain expression.
at::Tensor swiglu_down(const at::Tensor& gate_up, const at::Tensor& down_weight,
                       const at::Tensor& down_bias = {});

}  // namespace fsdp::models
