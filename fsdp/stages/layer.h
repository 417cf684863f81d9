// A layer as the multi-stage model sees it: it declares its parameters without
// allocating them, is bound afterwards to tensors that someone else owns, and
// computes.
//
// Declaring first is the native form of "init on the meta device" (docs/DESIGN.md, "Declare"):
// no rank ever allocates the whole model; a stage lays its layers' parameters
// out, shards them, and binds the layers to views of its buffer. The same layer
// bound to ordinary tensors is the unsharded reference the parity tests use.
// Non-persistent buffers (RoPE inv_freq, masks) are not parameters: a layer
// computes them in its constructor, as real tensors, so they are never lost.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

#include "fsdp/flat_layout.h"

namespace fsdp::stages {

// What a layer's forward() produced besides its output. The model collects it
// after every forward (Layer::take_side_outputs).
struct SideOutputs {
  // A scalar the training objective adds (a router's load-balancing and
  // z-losses, already weighted by their coefficients), in the graph of that
  // forward: the model differentiates it together with the output. Undefined: none.
  at::Tensor auxiliary_loss;
  // Tokens routed to each expert, [experts] or [sublayers, experts] (a stack
  // of blocks), for the load report. Undefined: the layer routes nothing.
  at::Tensor expert_tokens;
};

// What a layer's forward keeps alive for its backward, for a memory estimate
// before the first step. Both in bytes.
struct ActivationBytes {
  std::int64_t saved = 0;   // tensors autograd keeps from forward to backward
  std::int64_t output = 0;  // the layer's output (the next layer's input)
  // The largest share of `saved` that one of forward_part()'s parts keeps;
  // 0 when the layer is one part (the share is then `saved`).
  std::int64_t largest_part = 0;
  // The largest share of `saved` whose activation gradients the backward
  // holds at once (a stack: one block's); 0 when that is all of `saved`.
  std::int64_t backward_window = 0;
};

class Layer {
 public:
  virtual ~Layer() = default;

  // The parameters this layer declares, with full names ("decoder.3.mlp.down.weight"),
  // shapes and initialisers, in a fixed order.
  virtual std::vector<ParameterSpec> parameter_specs() const = 0;

  // Gives the layer its parameters, in parameter_specs() order and shapes. The
  // layer keeps the tensors and reads them in forward(); whoever owns them
  // guarantees they hold the weights then (a stage asserts it is restored).
  virtual void bind(std::vector<at::Tensor> parameters) = 0;

  virtual at::Tensor forward(const at::Tensor& input) = 0;
  // The forward in `forward_parts()` consecutive parts, each a function of
  // the previous part's output: forward_part(n - 1, ... forward_part(0, x))
  // computes what forward(x) does, with the same operations in the same order
  // (bitwise the same output and gradients). Activation checkpointing
  // recomputes a layer part by part in its backward, so that only one part's
  // graph is alive at a time (a decoder block: its attention, then its MLP).
  // Side outputs are taken after every part. Default: one part, the forward.
  virtual std::size_t forward_parts() const { return 1; }
  virtual at::Tensor forward_part(std::size_t part, const at::Tensor& input) {
    return forward(input);
  }

  // Values that replace parameter `index`'s declared initialiser (index in
  // parameter_specs() order), or an undefined tensor to keep the initialiser.
  // For layers that bring their own weights (an adopted torch::nn module);
  // MultiStageModel::initialize_weights() writes them into the shards.
  virtual at::Tensor initial_value(std::size_t index) const { return {}; }
  // Called once those values are in the shards: the layer may free them.
  virtual void release_initial_values() {}

  // The side outputs of the last forward(), handed over once: the layer
  // forgets them (and the graph they hold). Default: none.
  virtual SideOutputs take_side_outputs() { return {}; }

  // An estimate of what forward() on a [batch, sequence] input keeps for the
  // backward, with activations of `element_size` bytes. Default: unknown (0),
  // which the model's memory report states as such.
  virtual ActivationBytes activation_bytes(std::int64_t batch, std::int64_t sequence,
                                           std::int64_t element_size) const {
    return {};
  }
};

}  // namespace fsdp::stages
