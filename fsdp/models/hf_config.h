// A HuggingFace model directory's config.json, read into the one model config
// (fsdp/models/llama.h) that every supported architecture maps onto.
//
//   const HfModelConfig hf = read_hf_config("Meta-Llama-3.2-1B/");
//   LlamaConfig model = hf.model;          // sizes, GQA, RoPE, biases, MoE routing, ...
//   model.max_sequence = 2048;             // the caller's sequence length (<= hf.max_positions)
//   auto rules = llama_conversion_rules(model);
//
// Supported model_type values and what each brings (as transformers 5 writes them):
//   llama      grouped-query attention, head_dim, attention_bias (q/k/v/o), mlp_bias,
//              tie_word_embeddings, RoPE "default" and "llama3" scaling
//   mistral    sliding_window (every layer)
//   qwen2      q/k/v biases; layer_types / use_sliding_window + max_window_layers
//   qwen3      per-head RMSNorm on q and k; attention_bias
//   mixtral    block_sparse_moe router and per-expert w1/w3/w2, renormalised top-k
//   qwen3_moe  mlp.gate and per-expert gate/up/down_proj, moe_intermediate_size,
//              norm_topk_prob, decoder_sparse_step, mlp_only_layers
// RoPE is read from "rope_parameters" (transformers 5) or "rope_theta" +
// "rope_scaling" (older files). Anything else a config asks for that this
// model does not compute (another model_type or RoPE type, a non-SiLU
// activation, dropout, router jitter, partial rotary, shared experts, ...) is
// refused: never a silently different function.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>

#include <nlohmann/json.hpp>

#include "fsdp/errors.h"
#include "fsdp/models/llama.h"

namespace fsdp::models {

struct HfModelConfig {
  // max_sequence is left at LlamaConfig's default: the caller sets its own
  // sequence length (the RoPE tables and mask are built for that many positions).
  LlamaConfig model;
  std::string model_type;          // "llama", "mixtral", ...
  std::int64_t max_positions = 0;  // max_position_embeddings (0 when absent)
  std::string dtype;               // "bfloat16", "float32", ... ("" when the config does not say)
  nlohmann::json source;           // config.json as read, for export
};

// Reads `directory`/config.json. Throws fsdp::ConfigurationError
// (fsdp/errors.h) naming the file, the field, the value found and what is
// supported or expected.
HfModelConfig read_hf_config(const std::filesystem::path& directory);
// The same from parsed JSON; `source_name` names it in messages.
HfModelConfig hf_config_from_json(const nlohmann::json& config, const std::string& source_name);

// The config.json to export `model` with (in `.source`, with what it reads
// back as in the other fields): `source` (the config the model was
// imported from) with the fields the model defines brought up to date, or,
// for a model that did not come from HF (source null), a config of the
// matching transformers architecture: "llama" for a dense model, "qwen3_moe"
// for an MoE one with Qwen expert naming, "mixtral" with Mixtral naming.
// `dtype` is what the exported tensors are stored as. Throws
// fsdp::ConfigurationError for a model no transformers architecture computes
// (stacked layers export unstacked, so they are fine).
HfModelConfig hf_config_for_export(const LlamaConfig& model, const nlohmann::json& source,
                                   const std::string& dtype);

}  // namespace fsdp::models
