// The Llama-family decoder (not part of the runtime's core): token embedding,
// decoder blocks (RMSNorm, causal self-attention with rotary position
// embeddings, SwiGLU MLP or mixture of experts, residuals), final RMSNorm and
// output head. One config describes every architecture we load from
// HuggingFace by what it needs (grouped-query attention, biases, q/k norms,
// RoPE scaling, sliding windows, MoE routing), not by vendor: Llama 2/3,
// Mistral, Qwen2, Qwen3, Mixtral and Qwen3-MoE are all this model
// (fsdp/models/hf_config.h reads their config.json). Each piece is a stages::Layer,
// so the same objects run sharded in a MultiStageModel or bound to plain
// tensors as a reference.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "fsdp/stages/layer.h"

namespace fsdp::models {

// How rotary frequencies are derived from rope_theta.
struct RopeScaling {
  enum class Type { kDefault, kLlama3 };
  Type type = Type::kDefault;
  // Llama 3.1/3.2 ("rope_type": "llama3"): frequencies whose wavelength exceeds
  // original_max_position / low_frequency_factor are divided by `factor`, those
  // below original_max_position / high_frequency_factor are kept, and the
  // band between is interpolated smoothly.
  double factor = 8.0;
  double low_frequency_factor = 1.0;
  double high_frequency_factor = 4.0;
  std::int64_t original_max_position = 8192;
};

// How MoE experts and routers are named in a HuggingFace checkpoint.
enum class HfExpertNaming {
  kQwen,     // mlp.gate, mlp.experts.{e}.{gate,up,down}_proj (Qwen3-MoE; our presets)
  kMixtral,  // block_sparse_moe.gate, block_sparse_moe.experts.{e}.{w1,w3,w2}
};

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
  // [L, 3H, H], ...), as some checkpoints store layers. The stack is one layer, so it
  // sits in one stage.
  bool stacked_layers = false;

  // --- What real architectures add (defaults: the reference Llama above) ---
  // Grouped-query attention: key/value heads, each shared by heads / kv_heads
  // query heads. 0 means `heads` (multi-head attention).
  std::int64_t kv_heads = 0;
  // Per-head width; 0 means hidden / heads. Qwen3 and some Mistrals set it apart.
  std::int64_t head_dim = 0;
  bool qkv_bias = false;     // q/k/v projections carry biases (Qwen2; Llama's attention_bias)
  bool output_bias = false;  // the attention output projection too (Llama's attention_bias)
  bool mlp_bias = false;     // the dense MLP's projections (Llama's mlp_bias)
  bool qk_norm = false;      // RMSNorm over each head of q and k before RoPE (Qwen3)
  RopeScaling rope_scaling;
  // Sliding-window attention: a token sees itself and the window - 1 tokens
  // before it. 0 is full causal attention. `sliding_layers` says which layers
  // use it (empty: all of them, as Mistral does).
  std::int64_t sliding_window = 0;
  std::vector<bool> sliding_layers;
  // MoE: the experts' intermediate size (0 means `intermediate`, which dense
  // layers use), whether the top-k probabilities are renormalised to sum to 1
  // (Mixtral always; Qwen3-MoE's norm_topk_prob), and the layers whose MLP is
  // dense inside an MoE model (Qwen3-MoE's mlp_only_layers / decoder_sparse_step).
  std::int64_t expert_intermediate = 0;
  bool normalize_top_k = true;
  std::vector<std::int64_t> dense_layers;
  HfExpertNaming expert_naming = HfExpertNaming::kQwen;
  // MoE router losses, for training (they do not change what the model
  // computes). Each MoE layer adds, per sequence of T tokens and averaged over
  // the sequences of a micro-batch (so that no loss depends on how sequences
  // are spread over ranks and micro-batches):
  //   load balancing (Switch; transformers' load_balancing_loss_func on one
  //   sequence):  E * sum_e (tokens routed to e / T) * (mean router probability of e)
  //   z-loss (ST-MoE): mean over tokens of logsumexp(router logits)^2
  // times these coefficients; 0 turns a loss off. Uniform routing gives a
  // balancing loss of experts_per_token.
  double router_aux_loss_coefficient = 0;
  double router_z_loss_coefficient = 0;

  std::int64_t key_value_heads() const { return kv_heads > 0 ? kv_heads : heads; }
  std::int64_t head_size() const { return head_dim > 0 ? head_dim : hidden / heads; }
  std::int64_t experts_intermediate() const {
    return expert_intermediate > 0 ? expert_intermediate : intermediate;
  }
  // Whether decoder layer `layer` routes through experts (false in a dense model).
  bool is_moe_layer(std::int64_t layer) const;
  // The attention window of decoder layer `layer`; 0 for full causal attention.
  std::int64_t attention_window(std::int64_t layer) const;
};

// embedding, decoder.0 .. decoder.{layers-1} (or one stacked "decoder"), head
// (final norm + output projection).
// Throws std::invalid_argument naming the field when the config is
// inconsistent (an odd head size, heads not a multiple of kv_heads, a
// dense-layer index out of range, layers that differ under stacked_layers).
std::vector<std::unique_ptr<stages::Layer>> build_llama_layers(const LlamaConfig& config);

}  // namespace fsdp::models
