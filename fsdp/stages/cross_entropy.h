// Next-token cross-entropy whose gradient is taken during the forward.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

namespace fsdp::stages {

// The mean cross-entropy of `logits` ([rows, vocabulary], any floating
// type; computed in float32) against `targets` ([rows], int64 class indices;
// rows whose target is `ignore_index` count neither in the sum nor in the
// mean), differentiable with respect to `logits`: the same value and
// gradient as at::cross_entropy_loss(logits.to(at::kFloat), targets) with
// its defaults, up to rounding.
//
// Why not at::cross_entropy_loss: it keeps its log-softmax (rows x
// vocabulary float32) from the forward to the backward, and its backward
// allocates two more tensors of that size (the NLL gradient, then the
// log-softmax gradient) while the first is alive. The logits are usually the
// largest activation of a language model, and the head's backward runs when
// every other activation is still alive, so those three copies often set the
// peak memory of a step. Here the gradient, (softmax - one-hot) / count, is
// computed in the forward instead, and it is the only vocabulary-sized tensor
// kept until the backward, which scales it in place and hands it on: one copy
// where there were three.
//
// The graph can be differentiated once (backward with retain_graph=false):
// a second backward through it throws std::logic_error. Throws
// std::invalid_argument for shapes or types that do not match the contract,
// naming what was found, and for a target outside [0, vocabulary) other
// than ignore_index.
at::Tensor next_token_cross_entropy(const at::Tensor& logits, const at::Tensor& targets,
                                    std::int64_t ignore_index = -100);

}  // namespace fsdp::stages
