#include "fsdp/models/hf_config.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <map>
#include <set>
#include <stdexcept>

#include "fsdp/checkpoint/json_input.h"
#include "fsdp/errors.h"
#include "fsdp/models/llama_config_json.h"

namespace fsdp::models {
namespace {

using nlohmann::json;

// A value for messages: short, never a whole (possibly hostile) document.
std::string shown(const json& value) {
  std::string text = value.dump();
  if (text.size() > 48) text = text.substr(0, 45) + "...";
  return text;
}

// Reads the fields of one config.json, naming it in every error.
class ConfigFields {
 public:
  ConfigFields(const json& config, std::string source)
      : config_(config), source_(std::move(source)) {}

  [[noreturn]] void refuse(const std::string& field, const std::string& found,
                           const std::string& expected) const {
    throw ConfigurationError(source_ + ": \"" + field + "\" is " + found + "; " + expected);
  }

  bool has(const std::string& field) const {
    const auto found = config_.find(field);
    return found != config_.end() && !found->is_null();
  }
  const json& at(const std::string& field) const { return config_.at(field); }

  std::int64_t integer(const std::string& field, std::int64_t minimum) const {
    if (!has(field)) refuse(field, "missing", "expected an integer >= " + std::to_string(minimum));
    return integer_in(config_.at(field), field, minimum);
  }
  std::int64_t integer_or(const std::string& field, std::int64_t fallback,
                          std::int64_t minimum) const {
    return has(field) ? integer_in(config_.at(field), field, minimum) : fallback;
  }
  std::int64_t integer_in(const json& value, const std::string& field, std::int64_t minimum) const {
    if (!value.is_number_integer() || value.get<std::int64_t>() < minimum) {
      refuse(field, shown(value), "expected an integer >= " + std::to_string(minimum));
    }
    return value.get<std::int64_t>();
  }
  double number_in(const json& value, const std::string& field) const {
    if (!value.is_number()) refuse(field, shown(value), "expected a number");
    return value.get<double>();
  }
  double number_or(const std::string& field, double fallback) const {
    return has(field) ? number_in(config_.at(field), field) : fallback;
  }
  bool boolean_or(const std::string& field, bool fallback) const {
    if (!has(field)) return fallback;
    if (!config_.at(field).is_boolean())
      refuse(field, shown(config_.at(field)), "expected true or false");
    return config_.at(field).get<bool>();
  }
  std::string string_or(const std::string& field, const std::string& fallback) const {
    if (!has(field)) return fallback;
    if (!config_.at(field).is_string())
      refuse(field, shown(config_.at(field)), "expected a string");
    return config_.at(field).get<std::string>();
  }
  // A field this model cannot honour unless it holds `neutral` (or is absent).
  void require_neutral(const std::string& field, const json& neutral,
                       const std::string& why) const {
    if (has(field) && config_.at(field) != neutral) {
      refuse(field, shown(config_.at(field)), why);
    }
  }

 private:
  const json& config_;
  std::string source_;
};

const std::vector<std::string> kSupportedTypes = {"llama", "mistral", "qwen2",
                                                  "qwen3", "mixtral", "qwen3_moe"};

std::string joined(const std::vector<std::string>& items) {
  std::string text;
  for (const auto& item : items) text += (text.empty() ? "" : ", ") + item;
  return text;
}

// RoPE: transformers 5's "rope_parameters", or the older "rope_theta" + "rope_scaling".
void read_rope(const ConfigFields& fields, LlamaConfig& model) {
  json parameters = json::object();
  std::string where = "rope_scaling";
  if (fields.has("rope_parameters")) {
    parameters = fields.at("rope_parameters");
    where = "rope_parameters";
    if (!parameters.is_object()) fields.refuse(where, shown(parameters), "expected an object");
  } else if (fields.has("rope_scaling")) {
    parameters = fields.at("rope_scaling");
    if (!parameters.is_object()) fields.refuse(where, shown(parameters), "expected an object");
  }
  const ConfigFields rope(parameters, "");
  const auto field = [&](const std::string& name) { return where + "." + name; };
  const auto number = [&](const std::string& name, double fallback) {
    if (!rope.has(name)) return fallback;
    return fields.number_in(parameters.at(name), field(name));
  };
  model.rope_theta =
      rope.has("rope_theta") ? number("rope_theta", 0) : fields.number_or("rope_theta", 10000.0);
  if (!(model.rope_theta > 0)) {
    fields.refuse("rope_theta", std::to_string(model.rope_theta), "expected a positive number");
  }
  // Older files spell the type "type"; transformers 5 "rope_type".
  std::string type = "default";
  for (const char* key : {"rope_type", "type"}) {
    if (!rope.has(key)) continue;
    if (!parameters.at(key).is_string())
      fields.refuse(field(key), shown(parameters.at(key)), "expected a string");
    type = parameters.at(key).get<std::string>();
    break;
  }
  if (type == "llama3") {
    RopeScaling& scaling = model.rope_scaling;
    scaling.type = RopeScaling::Type::kLlama3;
    scaling.factor = number("factor", 8.0);
    scaling.low_frequency_factor = number("low_freq_factor", 1.0);
    scaling.high_frequency_factor = number("high_freq_factor", 4.0);
    if (!rope.has("original_max_position_embeddings")) {
      fields.refuse(field("original_max_position_embeddings"), "missing",
                    "llama3 RoPE scaling needs it");
    }
    scaling.original_max_position =
        fields.integer_in(parameters.at("original_max_position_embeddings"),
                          field("original_max_position_embeddings"), 1);
    if (!(scaling.factor > 0) || !(scaling.high_frequency_factor > scaling.low_frequency_factor)) {
      fields.refuse(where, shown(parameters),
                    "llama3 scaling needs factor > 0 and high_freq_factor > low_freq_factor");
    }
  } else if (type != "default") {
    fields.refuse(field("rope_type"), shown(json(type)), "supported: default, llama3");
  }
  const double partial = rope.has("partial_rotary_factor")
                             ? number("partial_rotary_factor", 1.0)
                             : fields.number_or("partial_rotary_factor", 1.0);
  if (partial != 1.0) {
    fields.refuse("partial_rotary_factor", std::to_string(partial),
                  "only 1.0 (RoPE over the whole head) is supported");
  }
}

// Which layers attend through a sliding window.
void read_sliding_window(const ConfigFields& fields, const std::string& type, LlamaConfig& model) {
  const std::int64_t window = fields.integer_or("sliding_window", 0, 1);
  if (fields.has("layer_types")) {
    const json& types = fields.at("layer_types");
    if (!types.is_array() || static_cast<std::int64_t>(types.size()) != model.layers) {
      fields.refuse("layer_types", shown(types),
                    "expected a list of " + std::to_string(model.layers) + " layer types");
    }
    bool any_sliding = false;
    for (const json& layer_type : types) {
      if (layer_type == "full_attention") {
        model.sliding_layers.push_back(false);
      } else if (layer_type == "sliding_attention") {
        model.sliding_layers.push_back(true);
        any_sliding = true;
      } else {
        fields.refuse("layer_types", shown(layer_type),
                      "supported layer types: full_attention, sliding_attention");
      }
    }
    if (any_sliding && window == 0) {
      fields.refuse("sliding_window", "missing", "layer_types has sliding_attention layers");
    }
    model.sliding_window = any_sliding ? window : 0;
    if (!any_sliding) model.sliding_layers.clear();
    return;
  }
  if (type == "qwen2" || type == "qwen3" || type == "qwen3_moe") {
    // Qwen without layer_types: use_sliding_window turns the window on for
    // layers from max_window_layers on.
    if (!fields.boolean_or("use_sliding_window", false) || window == 0) return;
    const std::int64_t first = fields.integer_or("max_window_layers", 0, 0);
    for (std::int64_t l = 0; l < model.layers; ++l) model.sliding_layers.push_back(l >= first);
    model.sliding_window = window;
    return;
  }
  if (type == "mistral" || type == "mixtral") model.sliding_window = window;
}

void read_experts(const ConfigFields& fields, const std::string& type, LlamaConfig& model) {
  const std::string count_field =
      fields.has("num_local_experts") ? "num_local_experts" : "num_experts";
  model.experts = fields.integer(count_field, 1);
  model.experts_per_token = fields.integer("num_experts_per_tok", 1);
  if (model.experts_per_token > model.experts) {
    fields.refuse("num_experts_per_tok", std::to_string(model.experts_per_token),
                  "expected at most " + count_field + " = " + std::to_string(model.experts));
  }
  for (const char* shared :
       {"shared_expert_intermediate_size", "n_shared_experts", "num_shared_experts"}) {
    fields.require_neutral(shared, 0, "shared experts are not supported");
  }
  // transformers adds the balancing loss to the training loss only when
  // output_router_logits is set (false by default), with router_aux_loss_coef.
  if (fields.boolean_or("output_router_logits", false)) {
    for (const auto& [field, coefficient] :
         {std::pair{"router_aux_loss_coef", &model.router_aux_loss_coefficient},
          std::pair{"router_z_loss_coef", &model.router_z_loss_coefficient}}) {
      *coefficient = fields.number_or(field, 0.0);
      if (!std::isfinite(*coefficient) || *coefficient < 0) {
        fields.refuse(field, shown(fields.at(field)), "expected a coefficient of 0 or more");
      }
    }
  }
  if (type == "mixtral") {
    model.expert_naming = HfExpertNaming::kMixtral;
    model.normalize_top_k = true;
    fields.require_neutral("router_jitter_noise", 0.0,
                           "router jitter (training-time noise on the router input) is not "
                           "supported; set it to 0");
    return;
  }
  // qwen3_moe
  model.expert_naming = HfExpertNaming::kQwen;
  model.expert_intermediate = fields.integer("moe_intermediate_size", 1);
  model.normalize_top_k = fields.boolean_or("norm_topk_prob", false);
  const std::int64_t step = fields.integer_or("decoder_sparse_step", 1, 1);
  std::set<std::int64_t> dense;
  if (fields.has("mlp_only_layers")) {
    const json& listed = fields.at("mlp_only_layers");
    if (!listed.is_array())
      fields.refuse("mlp_only_layers", shown(listed), "expected a list of layer indices");
    for (const json& layer : listed) {
      const std::int64_t index = fields.integer_in(layer, "mlp_only_layers", 0);
      if (index >= model.layers) {
        fields.refuse(
            "mlp_only_layers", std::to_string(index),
            "expected layer indices below num_hidden_layers = " + std::to_string(model.layers));
      }
      dense.insert(index);
    }
  }
  // transformers: a layer is sparse when (layer + 1) % decoder_sparse_step == 0.
  for (std::int64_t l = 0; l < model.layers; ++l) {
    if ((l + 1) % step != 0) dense.insert(l);
  }
  model.dense_layers.assign(dense.begin(), dense.end());
}

// The function a config computes: implied values made explicit, and what does
// not change the function (how the weights are named, stacked, initialised,
// or how long the RoPE tables are) or does not apply cleared.
LlamaConfig function_of(LlamaConfig config) {
  config.kv_heads = config.key_value_heads();
  config.head_dim = config.head_size();
  config.expert_intermediate = config.experts_intermediate();
  if (config.rope_scaling.type == RopeScaling::Type::kDefault) config.rope_scaling = RopeScaling{};
  if (config.experts == 0) {
    config.experts_per_token = 0;
    config.expert_intermediate = 0;
    config.normalize_top_k = true;
    config.dense_layers.clear();
  } else if (config.dense_layers.empty()) {
    config.intermediate = 0;  // every MLP is experts: intermediate_size is not used
  }
  if (config.sliding_window == 0) config.sliding_layers.clear();
  config.max_sequence = 0;
  config.init_std = 0;
  config.router_aux_loss_coefficient = 0;  // training losses, not the function
  config.router_z_loss_coefficient = 0;
  config.stacked_layers = false;
  config.expert_naming = HfExpertNaming::kQwen;
  return config;
}

}  // namespace

HfModelConfig hf_config_from_json(const json& config, const std::string& source_name) {
  if (!config.is_object()) {
    throw ConfigurationError(source_name + ": expected a JSON object, found " + shown(config));
  }
  const ConfigFields fields(config, source_name);
  HfModelConfig result;
  result.source = config;
  if (!fields.has("model_type")) {
    fields.refuse("model_type", "missing", "supported: " + joined(kSupportedTypes));
  }
  const std::string type = fields.string_or("model_type", "");
  if (std::find(kSupportedTypes.begin(), kSupportedTypes.end(), type) == kSupportedTypes.end()) {
    fields.refuse("model_type", shown(json(type)), "supported: " + joined(kSupportedTypes));
  }
  result.model_type = type;

  LlamaConfig& model = result.model;
  model.vocabulary = fields.integer("vocab_size", 1);
  model.hidden = fields.integer("hidden_size", 1);
  model.layers = fields.integer("num_hidden_layers", 1);
  model.heads = fields.integer("num_attention_heads", 1);
  model.kv_heads = fields.integer_or("num_key_value_heads", model.heads, 1);
  if (model.heads % model.kv_heads != 0) {
    fields.refuse("num_key_value_heads", std::to_string(model.kv_heads),
                  "expected a divisor of num_attention_heads = " + std::to_string(model.heads));
  }
  model.head_dim = fields.integer_or("head_dim", 0, 2);
  if (model.head_dim == 0 && model.hidden % model.heads != 0) {
    fields.refuse("hidden_size", std::to_string(model.hidden),
                  "no head_dim is given, so expected a multiple of num_attention_heads = " +
                      std::to_string(model.heads));
  }
  if (model.head_size() % 2 != 0) {
    fields.refuse("head_dim", std::to_string(model.head_size()),
                  "expected an even head size (RoPE)");
  }
  model.intermediate = fields.integer("intermediate_size", 1);
  model.rms_epsilon = fields.number_or("rms_norm_eps", 1e-6);
  model.init_std = fields.number_or("initializer_range", 0.02);
  model.tie_embeddings = fields.boolean_or("tie_word_embeddings", false);
  result.max_positions = fields.integer_or("max_position_embeddings", 0, 1);
  result.dtype = fields.string_or("dtype", fields.string_or("torch_dtype", ""));

  const std::string activation = fields.string_or("hidden_act", "silu");
  if (activation != "silu") {
    fields.refuse("hidden_act", shown(json(activation)), "supported: silu (SwiGLU MLPs)");
  }
  fields.require_neutral("attention_dropout", 0.0, "dropout is not supported; set it to 0");
  fields.require_neutral("mlp_dropout", 0.0, "dropout is not supported; set it to 0");
  fields.require_neutral("pretraining_tp", 1,
                         "tensor-parallel emulation (pretraining_tp) is not supported");
  read_rope(fields, model);

  // Biases and norms by architecture: each transformers class hard-codes some.
  if (type == "llama") {
    model.qkv_bias = model.output_bias = fields.boolean_or("attention_bias", false);
    model.mlp_bias = fields.boolean_or("mlp_bias", false);
  } else if (type == "qwen2") {
    model.qkv_bias = true;  // Qwen2Attention: q/k/v with bias, o_proj without
  } else if (type == "qwen3" || type == "qwen3_moe") {
    model.qkv_bias = model.output_bias = fields.boolean_or("attention_bias", false);
    model.qk_norm = true;
  } else {
    // mistral, mixtral: no biases; refuse a config that claims some.
    fields.require_neutral("attention_bias", false, "this architecture has no attention biases");
    fields.require_neutral("mlp_bias", false, "this architecture has no MLP biases");
  }
  if (type != "llama") {
    fields.require_neutral("mlp_bias", false, "only llama configs may set mlp_bias");
  }
  read_sliding_window(fields, type, model);
  if (type == "mixtral" || type == "qwen3_moe") read_experts(fields, type, model);
  return result;
}

HfModelConfig read_hf_config(const std::filesystem::path& directory) {
  const std::filesystem::path path = directory / "config.json";
  std::error_code error;
  if (!std::filesystem::exists(path, error)) {
    throw ConfigurationError(path.string() +
                             ": cannot be read (an HF model directory needs its config.json)");
  }
  json config;
  try {
    config = checkpoint::read_untrusted_json_file(path);  // bounded depth and size, no FIFO
  } catch (const CheckpointError& failure) {
    throw ConfigurationError(failure.what());
  }
  return hf_config_from_json(config, path.string());
}

HfModelConfig hf_config_for_export(const LlamaConfig& model, const json& source,
                                   const std::string& dtype) {
  json config = source.is_object() ? source : json::object();
  if (!source.is_object()) {
    // The transformers architecture that computes this model.
    std::string type = "llama";
    if (model.experts > 0) {
      if (!model.dense_layers.empty() || !model.normalize_top_k || model.qk_norm) {
        type = "qwen3_moe";
      } else {
        type = "mixtral";
      }
    } else if (model.qk_norm) {
      type = "qwen3";
    }
    static const std::map<std::string, std::string> kArchitectures = {
        {"llama", "LlamaForCausalLM"},
        {"mixtral", "MixtralForCausalLM"},
        {"qwen3", "Qwen3ForCausalLM"},
        {"qwen3_moe", "Qwen3MoeForCausalLM"}};
    config["model_type"] = type;
    config["architectures"] = json::array({kArchitectures.at(type)});
    config["hidden_act"] = "silu";
    config["max_position_embeddings"] = model.max_sequence;
  }
  const std::string type = config.value("model_type", "llama");
  config["vocab_size"] = model.vocabulary;
  config["hidden_size"] = model.hidden;
  config["intermediate_size"] = model.intermediate;
  config["num_hidden_layers"] = model.layers;
  config["num_attention_heads"] = model.heads;
  config["num_key_value_heads"] = model.key_value_heads();
  // A source without head_dim (hidden / heads implied) keeps it implied.
  if (model.head_dim > 0 || !source.is_object()) config["head_dim"] = model.head_size();
  config["rms_norm_eps"] = model.rms_epsilon;
  config["tie_word_embeddings"] = model.tie_embeddings;
  if (!dtype.empty()) {
    config["dtype"] = dtype;
    config.erase("torch_dtype");
  }
  if (!source.is_object()) {
    config["rope_parameters"] = {{"rope_theta", model.rope_theta}, {"rope_type", "default"}};
    if (model.rope_scaling.type == RopeScaling::Type::kLlama3) {
      const RopeScaling& scaling = model.rope_scaling;
      config["rope_parameters"] = {
          {"rope_theta", model.rope_theta},
          {"rope_type", "llama3"},
          {"factor", scaling.factor},
          {"low_freq_factor", scaling.low_frequency_factor},
          {"high_freq_factor", scaling.high_frequency_factor},
          {"original_max_position_embeddings", scaling.original_max_position}};
    }
    if (type == "llama" || type == "qwen3" || type == "qwen3_moe") {
      config["attention_bias"] = model.qkv_bias;
    }
    if (type == "llama") config["mlp_bias"] = model.mlp_bias;
    if (model.experts > 0) {
      config[type == "mixtral" ? "num_local_experts" : "num_experts"] = model.experts;
      config["num_experts_per_tok"] = model.experts_per_token;
      if (type == "qwen3_moe") {
        config["moe_intermediate_size"] = model.experts_intermediate();
        config["norm_topk_prob"] = model.normalize_top_k;
        config["decoder_sparse_step"] = 1;
        config["mlp_only_layers"] = model.dense_layers;
      } else {
        config["router_jitter_noise"] = 0.0;
      }
    }
    if (model.sliding_window > 0) {
      throw ConfigurationError(
          "export: a sliding-window model that did not come from an HF config cannot be described "
          "by a transformers config here");
    }
  }
  if (type == "llama" && model.experts == 0 && model.qkv_bias != model.output_bias) {
    throw ConfigurationError("export: llama configs cannot give q/k/v biases without o_proj's");
  }
  // The config must describe exactly this model: read it back and compare
  // every field (fsdp/models/llama_config_json.h lists them) of the two functions.
  HfModelConfig described = hf_config_from_json(config, "exported config.json");
  if (to_json(function_of(described.model)) != to_json(function_of(model))) {
    throw ConfigurationError("export: no " + type +
                             " config describes this model exactly (the exported config.json "
                             "would compute a different function)");
  }
  return described;
}

}  // namespace fsdp::models
