// Conversion rules between HuggingFace Llama-style checkpoints and the
// reference model's runtime parameters (fsdp/models/llama.h).
//
//   model.embed_tokens.weight                         -> embedding.weight
//   model.layers.{l}.input_layernorm.weight           -> decoder.{l}.attention_norm.weight
//   model.layers.{l}.self_attn.{q,k,v}_proj.weight    -> decoder.{l}.attention.qkv.weight (concat,
//   dim 0) model.layers.{l}.self_attn.o_proj.weight          -> decoder.{l}.attention.dense.weight
//   model.layers.{l}.post_attention_layernorm.weight  -> decoder.{l}.mlp_norm.weight
//   dense:  mlp.{gate,up}_proj.weight                 -> decoder.{l}.mlp.gate_up.weight (concat,
//   dim 0)
//           mlp.down_proj.weight                      -> decoder.{l}.mlp.down.weight
//   MoE:    mlp.gate.weight                           -> decoder.{l}.mlp.router.weight
//           mlp.experts.{e}.{gate,up}_proj.weight     -> decoder.{l}.mlp.experts.gate_up_proj
//                                                        [E, 2I, H] (stack over e, concat)
//           mlp.experts.{e}.down_proj.weight          -> decoder.{l}.mlp.experts.down_proj [E, H,
//           I] or, fused on disk, mlp.experts.gate_up_proj / mlp.experts.down_proj (same shapes)
//   model.norm.weight                                 -> final_norm.weight
//   lm_head.weight                                    -> head.weight (absent when tied; a tied
//                                                        checkpoint that ships it anyway is
//                                                        accepted)
// Optional pieces follow the config: q/k/v biases -> attention.qkv.bias (concat),
// o_proj.bias -> attention.dense.bias, self_attn.{q,k}_norm.weight ->
// attention.{q,k}_norm.weight, MLP biases -> mlp.gate_up.bias / mlp.down.bias.
// Mixtral's experts are block_sparse_moe.experts.{e}.{w1 (gate), w3 (up),
// w2 (down)} and its router block_sparse_moe.gate.
// With stacked_layers, the runtime names lose ".{l}" and gain a leading [L]
// dimension stacked over {layer}. Export writes experts per expert (the
// on-disk layout of transformers 5); `rotary_emb.inv_freq` buffers that old
// checkpoints carry are ignored.
#pragma once

#include "fsdp/checkpoint/conversion_rules.h"
#include "fsdp/models/llama.h"

namespace fsdp::models {

checkpoint::ConversionRules llama_conversion_rules(const LlamaConfig& config);

}  // namespace fsdp::models
