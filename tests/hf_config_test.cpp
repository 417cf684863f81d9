// config.json -> the model config: both RoPE spellings, per-architecture
// features, and refusals that name the file, the field, the value and what is
// supported (never a silently different function).
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "fsdp/models/hf_config.h"

namespace fsdp::models {
namespace {

using nlohmann::json;

json llama() {
  return {{"model_type", "llama"},
          {"vocab_size", 128},
          {"hidden_size", 64},
          {"intermediate_size", 96},
          {"num_hidden_layers", 2},
          {"num_attention_heads", 4},
          {"num_key_value_heads", 2},
          {"rms_norm_eps", 1e-5},
          {"hidden_act", "silu"},
          {"rope_parameters", {{"rope_theta", 500000.0}, {"rope_type", "default"}}}};
}

json qwen3_moe(std::int64_t experts) {
  json config = llama();
  config["model_type"] = "qwen3_moe";
  config["num_experts"] = experts;
  config["num_experts_per_tok"] = 2;
  return config;
}

std::string refusal(const json& config) {
  try {
    hf_config_from_json(config, "dir/config.json");
  } catch (const ConfigurationError& error) {
    return error.what();
  }
  return "(accepted)";
}

TEST(HfConfig, ReadsLlamaWithGroupedQueryAttention) {
  const HfModelConfig hf = hf_config_from_json(llama(), "config.json");
  EXPECT_EQ(hf.model_type, "llama");
  EXPECT_EQ(hf.model.heads, 4);
  EXPECT_EQ(hf.model.key_value_heads(), 2);
  EXPECT_EQ(hf.model.head_size(), 16);
  EXPECT_EQ(hf.model.rope_theta, 500000.0);
  EXPECT_EQ(hf.model.experts, 0);
}

TEST(HfConfig, BothRopeSpellingsReadTheSame) {
  json modern = llama();
  modern["rope_parameters"] = {
      {"rope_type", "llama3"},   {"rope_theta", 500000.0},
      {"factor", 32.0},          {"low_freq_factor", 1.0},
      {"high_freq_factor", 4.0}, {"original_max_position_embeddings", 8192}};
  json legacy = llama();
  legacy.erase("rope_parameters");
  legacy["rope_theta"] = 500000.0;
  legacy["rope_scaling"] = {{"type", "llama3"},
                            {"factor", 32.0},
                            {"low_freq_factor", 1.0},
                            {"high_freq_factor", 4.0},
                            {"original_max_position_embeddings", 8192}};
  for (const json& config : {modern, legacy}) {
    const LlamaConfig model = hf_config_from_json(config, "config.json").model;
    EXPECT_EQ(model.rope_scaling.type, RopeScaling::Type::kLlama3);
    EXPECT_EQ(model.rope_scaling.factor, 32.0);
    EXPECT_EQ(model.rope_scaling.original_max_position, 8192);
    EXPECT_EQ(model.rope_theta, 500000.0);
  }
}

TEST(HfConfig, QwenMoeDenseLayersAndRouting) {
  json config = qwen3_moe(8);
  config["num_hidden_layers"] = 4;
  config["moe_intermediate_size"] = 32;
  config["norm_topk_prob"] = true;
  config["decoder_sparse_step"] = 2;
  config["mlp_only_layers"] = {3};
  const LlamaConfig model = hf_config_from_json(config, "config.json").model;
  EXPECT_TRUE(model.qk_norm);
  EXPECT_TRUE(model.normalize_top_k);
  EXPECT_EQ(model.experts_intermediate(), 32);
  // Sparse where (layer + 1) % 2 == 0, except layer 3: only layer 1.
  EXPECT_EQ(model.dense_layers, (std::vector<std::int64_t>{0, 2, 3}));
  EXPECT_TRUE(model.is_moe_layer(1));
}

// transformers adds router_aux_loss_coef x its balancing loss only when
// output_router_logits is true; the coefficients are training losses, not part
// of the function an export must reproduce.
TEST(HfConfig, RouterLossCoefficientsFollowOutputRouterLogits) {
  json config = qwen3_moe(4);
  config["moe_intermediate_size"] = 16;
  config["router_aux_loss_coef"] = 0.02;
  EXPECT_EQ(hf_config_from_json(config, "config.json").model.router_aux_loss_coefficient, 0);
  config["output_router_logits"] = true;
  LlamaConfig model = hf_config_from_json(config, "config.json").model;
  EXPECT_EQ(model.router_aux_loss_coefficient, 0.02);
  EXPECT_EQ(model.router_z_loss_coefficient, 0);
  config["router_z_loss_coef"] = 0.001;
  EXPECT_EQ(hf_config_from_json(config, "config.json").model.router_z_loss_coefficient, 0.001);
  config["router_aux_loss_coef"] = -0.5;
  EXPECT_NE(refusal(config).find("\"router_aux_loss_coef\" is -0.5"), std::string::npos)
      << refusal(config);
  config["router_aux_loss_coef"] = 0.02;
  model = hf_config_from_json(config, "config.json").model;
  const HfModelConfig exported = hf_config_for_export(model, config, "bfloat16");
  EXPECT_EQ(exported.model.router_aux_loss_coefficient, 0.02);
}

TEST(HfConfig, MistralSlidesEveryLayerQwenFollowsLayerTypes) {
  json mistral = llama();
  mistral["model_type"] = "mistral";
  mistral["sliding_window"] = 4096;
  const LlamaConfig model = hf_config_from_json(mistral, "config.json").model;
  EXPECT_EQ(model.attention_window(0), 4096);
  EXPECT_EQ(model.attention_window(1), 4096);
  json qwen = llama();
  qwen["model_type"] = "qwen2";
  qwen["sliding_window"] = 8;
  qwen["layer_types"] = {"full_attention", "sliding_attention"};
  const LlamaConfig qwen_model = hf_config_from_json(qwen, "config.json").model;
  EXPECT_EQ(qwen_model.attention_window(0), 0);
  EXPECT_EQ(qwen_model.attention_window(1), 8);
  EXPECT_TRUE(qwen_model.qkv_bias);
  EXPECT_FALSE(qwen_model.output_bias);
}

TEST(HfConfig, RefusesWhatItDoesNotCompute) {
  const auto refused = [](json config, const std::string& expected) {
    const std::string message = refusal(config);
    EXPECT_NE(message.find(expected), std::string::npos) << message;
    EXPECT_NE(message.find("dir/config.json"), std::string::npos) << message;
  };
  json other = llama();
  other["model_type"] = "gemma2";
  refused(
      other,
      "\"model_type\" is \"gemma2\"; supported: llama, mistral, qwen2, qwen3, mixtral, qwen3_moe");
  json yarn = llama();
  yarn["rope_parameters"]["rope_type"] = "yarn";
  refused(yarn, "\"rope_parameters.rope_type\" is \"yarn\"; supported: default, llama3");
  json gelu = llama();
  gelu["hidden_act"] = "gelu";
  refused(gelu, "\"hidden_act\" is \"gelu\"; supported: silu");
  json dropout = llama();
  dropout["attention_dropout"] = 0.1;
  refused(dropout, "\"attention_dropout\" is 0.1");
  json partial = llama();
  partial["partial_rotary_factor"] = 0.5;
  refused(partial, "\"partial_rotary_factor\"");
  json jitter = llama();
  jitter["model_type"] = "mixtral";
  jitter["num_local_experts"] = 4;
  jitter["num_experts_per_tok"] = 2;
  jitter["router_jitter_noise"] = 0.01;
  refused(jitter, "\"router_jitter_noise\" is 0.01");
  json groups = llama();
  groups["num_key_value_heads"] = 3;
  refused(groups, "\"num_key_value_heads\" is 3; expected a divisor of num_attention_heads = 4");
  json missing = llama();
  missing.erase("hidden_size");
  refused(missing, "\"hidden_size\" is missing");
  json shared = qwen3_moe(4);
  shared["moe_intermediate_size"] = 16;
  shared["shared_expert_intermediate_size"] = 64;
  refused(shared, "shared experts are not supported");
  // A hostile value is cut short in the message.
  json hostile = llama();
  hostile["hidden_act"] = std::string(10000, 'x');
  EXPECT_LT(refusal(hostile).size(), 300u);
}

TEST(HfConfig, ExportConfigForPresetsReadsBackToTheSameModel) {
  LlamaConfig dense;
  dense.vocabulary = 64;
  dense.hidden = 32;
  dense.heads = 4;
  dense.layers = 2;
  const json dense_config = hf_config_for_export(dense, nullptr, "float32").source;
  EXPECT_EQ(dense_config["model_type"], "llama");
  LlamaConfig moe = dense;
  moe.experts = 4;
  const json moe_config = hf_config_for_export(moe, nullptr, "bfloat16").source;
  EXPECT_EQ(moe_config["model_type"], "mixtral");
  EXPECT_EQ(moe_config["architectures"][0], "MixtralForCausalLM");
  EXPECT_EQ(moe_config["dtype"], "bfloat16");
  EXPECT_EQ(hf_config_from_json(moe_config, "x").model.expert_naming, HfExpertNaming::kMixtral);
}

// config.json is a file the user hands us: a deeply nested one, a FIFO or a
// directory in its place are refused without crashing or waiting.
TEST(HfConfig, HostileConfigFilesAreRefused) {
  const auto directory =
      std::filesystem::temp_directory_path() / ("hf_config_test_" + std::to_string(::getpid()));
  std::filesystem::remove_all(directory);
  std::filesystem::create_directories(directory);
  const auto refusal = [&]() -> std::string {
    try {
      read_hf_config(directory);
    } catch (const ConfigurationError& error) {
      return error.what();
    }
    return "(accepted)";
  };
  std::ofstream(directory / "config.json") << std::string(60000, '[') << std::string(60000, ']');
  EXPECT_NE(refusal().find("config.json: JSON nested deeper than 64 levels"), std::string::npos)
      << refusal();
  std::filesystem::remove(directory / "config.json");
  ASSERT_EQ(::mkfifo((directory / "config.json").c_str(), 0600), 0);
  EXPECT_NE(refusal().find("config.json: not a regular file"), std::string::npos) << refusal();
  std::filesystem::remove(directory / "config.json");
  std::filesystem::create_directory(directory / "config.json");
  EXPECT_NE(refusal().find("config.json: not a regular file (a directory)"), std::string::npos)
      << refusal();
  std::filesystem::remove_all(directory);
}

}  // namespace
}  // namespace fsdp::models
