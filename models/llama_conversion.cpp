#include "models/llama_conversion.h"

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
  add(ConversionRule::concatenate(block + "attention.qkv.weight",
                                  {hf + "self_attn.q_proj.weight", hf + "self_attn.k_proj.weight",
                                   hf + "self_attn.v_proj.weight"}));
  add(ConversionRule::rename(block + "attention.dense.weight", hf + "self_attn.o_proj.weight"));
  add(ConversionRule::rename(block + "mlp_norm.weight", hf + "post_attention_layernorm.weight"));
  if (config.experts == 0) {
    add(ConversionRule::concatenate(block + "mlp.gate_up.weight",
                                    {hf + "mlp.gate_proj.weight", hf + "mlp.up_proj.weight"}));
    add(ConversionRule::rename(block + "mlp.down.weight", hf + "mlp.down_proj.weight"));
  } else {
    add(ConversionRule::rename(block + "mlp.router.weight", hf + "mlp.gate.weight"));
    // Per expert first: what export writes, and the usual layout on disk.
    add(ConversionRule::concatenate(block + "mlp.experts.gate_up_proj",
                                    {hf + "mlp.experts.{expert}.gate_proj.weight",
                                     hf + "mlp.experts.{expert}.up_proj.weight"})
            .stack_over("expert"));
    add(ConversionRule::rename(block + "mlp.experts.down_proj",
                               hf + "mlp.experts.{expert}.down_proj.weight")
            .stack_over("expert"));
    add(ConversionRule::rename(block + "mlp.experts.gate_up_proj",
                               hf + "mlp.experts.gate_up_proj"));
    add(ConversionRule::rename(block + "mlp.experts.down_proj", hf + "mlp.experts.down_proj"));
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
