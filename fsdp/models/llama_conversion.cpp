#include "fsdp/models/llama_conversion.h"

namespace fsdp::models {

using checkpoint::ConversionRule;

checkpoint::ConversionRules llama_conversion_rules(const LlamaConfig& config) {
  const std::string block = config.stacked_layers ? "decoder." : "decoder.{layer}.";
  const std::string hf = "model.layers.{layer}.";
  checkpoint::ConversionRules rules;
  // Each per-layer rule stacks over {layer} (outermost) when the layers are stacked.
  const auto add = [&](ConversionRule rule) {
    if (config.stacked_layers) rule.stacked.insert(rule.stacked.begin(), "layer");
    rules.rules.push_back(std::move(rule));
  };
  rules.rules.push_back(ConversionRule::rename("embedding.weight", "model.embed_tokens.weight"));
  add(ConversionRule::rename(block + "attention_norm.weight", hf + "input_layernorm.weight"));
  const std::string attention = hf + "self_attn.";
  // Grouped-query attention: k and v have fewer rows than q.
  const std::int64_t query_rows = config.heads * config.head_size();
  const std::int64_t key_value_rows = config.key_value_heads() * config.head_size();
  const std::vector<std::int64_t> qkv_rows = {query_rows, key_value_rows, key_value_rows};
  add(ConversionRule::concatenate(
          block + "attention.qkv.weight",
          {attention + "q_proj.weight", attention + "k_proj.weight", attention + "v_proj.weight"})
          .sized(qkv_rows));
  if (config.qkv_bias) {
    add(ConversionRule::concatenate(
            block + "attention.qkv.bias",
            {attention + "q_proj.bias", attention + "k_proj.bias", attention + "v_proj.bias"})
            .sized(qkv_rows));
  }
  if (config.qk_norm) {
    add(ConversionRule::rename(block + "attention.q_norm.weight", attention + "q_norm.weight"));
    add(ConversionRule::rename(block + "attention.k_norm.weight", attention + "k_norm.weight"));
  }
  add(ConversionRule::rename(block + "attention.dense.weight", attention + "o_proj.weight"));
  if (config.output_bias) {
    add(ConversionRule::rename(block + "attention.dense.bias", attention + "o_proj.bias"));
  }
  add(ConversionRule::rename(block + "mlp_norm.weight", hf + "post_attention_layernorm.weight"));
  // A dense model, or an MoE model with some dense layers: the rules match by
  // runtime name, so each layer takes the ones its parameters need.
  if (config.experts == 0 || !config.dense_layers.empty()) {
    add(ConversionRule::concatenate(block + "mlp.gate_up.weight",
                                    {hf + "mlp.gate_proj.weight", hf + "mlp.up_proj.weight"}));
    add(ConversionRule::rename(block + "mlp.down.weight", hf + "mlp.down_proj.weight"));
    if (config.mlp_bias) {
      add(ConversionRule::concatenate(block + "mlp.gate_up.bias",
                                      {hf + "mlp.gate_proj.bias", hf + "mlp.up_proj.bias"}));
      add(ConversionRule::rename(block + "mlp.down.bias", hf + "mlp.down_proj.bias"));
    }
  }
  if (config.experts > 0) {
    // Mixtral names the router and the experts' gate/up/down w1/w3/w2 under block_sparse_moe.
    const bool mixtral = config.expert_naming == HfExpertNaming::kMixtral;
    const std::string moe = hf + (mixtral ? "block_sparse_moe." : "mlp.");
    const std::string expert = moe + "experts.{expert}.";
    const std::string gate = expert + (mixtral ? "w1.weight" : "gate_proj.weight");
    const std::string up = expert + (mixtral ? "w3.weight" : "up_proj.weight");
    const std::string down = expert + (mixtral ? "w2.weight" : "down_proj.weight");
    add(ConversionRule::rename(block + "mlp.router.weight", moe + "gate.weight"));
    // Per expert first: what export writes, and the usual layout on disk.
    add(ConversionRule::concatenate(block + "mlp.experts.gate_up_proj", {gate, up})
            .stack_over("expert"));
    add(ConversionRule::rename(block + "mlp.experts.down_proj", down).stack_over("expert"));
    add(ConversionRule::rename(block + "mlp.experts.gate_up_proj", moe + "experts.gate_up_proj"));
    add(ConversionRule::rename(block + "mlp.experts.down_proj", moe + "experts.down_proj"));
  }
  rules.rules.push_back(ConversionRule::rename("final_norm.weight", "model.norm.weight"));
  if (config.tie_embeddings) {
    rules.ignored.push_back("lm_head\\.weight");
  } else {
    rules.rules.push_back(ConversionRule::rename("head.weight", "lm_head.weight"));
  }
  rules.ignored.push_back("model\\.layers\\.[0-9]+\\.self_attn\\.rotary_emb\\.inv_freq");
  return rules;
}

}  // namespace fsdp::models
