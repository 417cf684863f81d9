// One block's slice of a stacked parameter, whose gradient goes straight into
// the stack's .grad.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

namespace fsdp::models {

// stacked.select(0, index) (a view, no copy), differentiable: the backward
// adds the slice's gradient into slice `index` of `stacked.grad()`, in place,
// allocating that gradient (zeros of the stack's shape) when it is undefined
// at the time, as autograd's accumulation would. The values are bitwise what
// select() leads to.
//
// Why not select(): its backward writes each slice's gradient into zeros of
// the whole stack's shape, and the engine adds those up until the last
// slice's backward before accumulating them into the stack's .grad -- a
// second copy of the stack's gradients, alive through the whole backward
// (with the runtime's views, .grad is already the flat gradient buffer).
// Here no gradient ever reaches `stacked` through the graph, so hooks on
// `stacked` see none (libtorch 1.13 does not call them; 2.x calls them with
// an undefined tensor); .grad is looked up during the backward, so a harness
// that resets it (set to none) after the forward still gets its gradient.
//
// For a leaf only, whose gradient is kept rather than passed on: otherwise
// (not a leaf, no grad mode, or no gradient needed) it is plain select().
// Not twice differentiable: a backward with create_graph throws.
at::Tensor stack_slice(const at::Tensor& stacked, std::int64_t index);

}  // namespace fsdp::models
