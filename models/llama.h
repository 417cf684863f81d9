// A small Llama-style decoder for tests and the training program (not part of
// the runtime's core): token embedding, decoder blocks (RMSNorm, causal
// self-attention with rotary position embeddings, SwiGLU MLP, residuals), final
// RMSNorm and output head. Each piece is a stages::Layer, so the same objects
// run sharded in a MultiStageModel or bound to plain tensors as a reference.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "stages/layer.h"

namespace fsdp::models {

struct LlamaConfig {
  std::int64_t vocabulary = 64;
  std::int64_t hidden = 32;
  std::int64_t heads = 4;
  std::int64_t intermediate = 64;
  std::int64_t layers = 2;
  std::int64_t max_sequence = 64;  // RoPE tables are built for this many positions
  double rms_epsilon = 1e-5;
  double rope_theta = 10000.0;
  double init_std = 0.02;
  // Mixture of experts: 0 for a dense SwiGLU MLP; otherwise every block's MLP
  // is `experts` SwiGLU experts in the transformers-5 fused layout --
  // mlp.experts.gate_up_proj [E, 2I, H] (per expert: gate rows, then up rows)
  // and mlp.experts.down_proj [E, H, I] -- behind a softmax router
  // (mlp.router.weight [E, H]) that sends each token to its top
  // `experts_per_token` experts, weighted by their renormalised probabilities.
  std::int64_t experts = 0;
  std::int64_t experts_per_token = 2;
  // The output head reuses the input embedding ("embedding.weight", HF's
  // tie_word_embeddings): one parameter, gradients of both uses summed.
  bool tie_embeddings = false;
  // All decoder blocks as one layer whose parameters are stacked along a
  // leading [layers] dimension ("decoder.attention.qkv.weight" of shape
  // [L, 3H, H], ...), the layout of seed 003. The stack is one layer, so it
  // sits in one stage.
  bool stacked_layers = false;
};

// embedding, decoder.0 .. decoder.{layers-1} (or one stacked "decoder"), head
// (final norm + output projection).
// Throws std::invalid_argument when hidden is not a multiple of 2 x heads.
std::vector<std::unique_ptr<stages::Layer>> build_llama_layers(const LlamaConfig& config);

}  // namespace fsdp::models
