#include "fsdp/models/llama_config_json.h"

#include <map>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

namespace fsdp::models {
namespace {

// Calls visit(name, field) for every field, so that both directions list them once.
template <typename Config, typename Visit>
void for_each_field(Config& config, Visit&& visit) {
  visit("vocabulary", config.vocabulary);
  visit("hidden", config.hidden);
  visit("heads", config.heads);
  visit("intermediate", config.intermediate);
  visit("layers", config.layers);
  visit("max_sequence", config.max_sequence);
  visit("rms_epsilon", config.rms_epsilon);
  visit("rope_theta", config.rope_theta);
  visit("init_std", config.init_std);
  visit("experts", config.experts);
  visit("experts_per_token", config.experts_per_token);
  visit("tie_embeddings", config.tie_embeddings);
  visit("stacked_layers", config.stacked_layers);
  visit("kv_heads", config.kv_heads);
  visit("head_dim", config.head_dim);
  visit("qkv_bias", config.qkv_bias);
  visit("output_bias", config.output_bias);
  visit("mlp_bias", config.mlp_bias);
  visit("qk_norm", config.qk_norm);
  visit("rope_factor", config.rope_scaling.factor);
  visit("rope_low_frequency_factor", config.rope_scaling.low_frequency_factor);
  visit("rope_high_frequency_factor", config.rope_scaling.high_frequency_factor);
  visit("rope_original_max_position", config.rope_scaling.original_max_position);
  visit("sliding_window", config.sliding_window);
  visit("sliding_layers", config.sliding_layers);
  visit("expert_intermediate", config.expert_intermediate);
  visit("normalize_top_k", config.normalize_top_k);
  visit("dense_layers", config.dense_layers);
  visit("router_aux_loss_coefficient", config.router_aux_loss_coefficient);
  visit("router_z_loss_coefficient", config.router_z_loss_coefficient);
}

// The enumerations, as the strings config.json files use.
const std::map<std::string, RopeScaling::Type> kRopeTypes = {
    {"default", RopeScaling::Type::kDefault}, {"llama3", RopeScaling::Type::kLlama3}};
const std::map<std::string, HfExpertNaming> kExpertNamings = {
    {"qwen", HfExpertNaming::kQwen}, {"mixtral", HfExpertNaming::kMixtral}};

template <typename Enum>
std::string name_of(const std::map<std::string, Enum>& names, Enum value) {
  for (const auto& [name, candidate] : names) {
    if (candidate == value) return name;
  }
  throw std::logic_error("model config: an enumeration value without a name");
}

template <typename Enum>
void read_enum(const nlohmann::json& json, const char* key,
               const std::map<std::string, Enum>& names, Enum& value) {
  const auto found = json.find(key);
  if (found == json.end()) return;
  std::string expected;
  for (const auto& [name, candidate] : names) expected += (expected.empty() ? "" : ", ") + name;
  const auto named = found->is_string() ? names.find(found->get<std::string>()) : names.end();
  if (named == names.end()) {
    throw std::invalid_argument(std::string("model config: \"") + key + "\" is " +
                                found->dump().substr(0, 40) + " (expected one of " + expected +
                                ")");
  }
  value = named->second;
}

constexpr const char* kEnumFields[] = {"rope_type", "expert_naming"};

template <typename T>
struct IsVector : std::false_type {};
template <typename T>
struct IsVector<std::vector<T>> : std::true_type {};

template <typename Field>
bool has_type(const nlohmann::json& value) {
  if constexpr (IsVector<Field>::value) {
    if (!value.is_array()) return false;
    for (const auto& element : value) {
      if (!has_type<typename Field::value_type>(element)) return false;
    }
    return true;
  } else if constexpr (std::is_same_v<Field, bool>) {
    return value.is_boolean();
  } else if constexpr (std::is_integral_v<Field>) {
    return value.is_number_integer();
  } else {
    return value.is_number();
  }
}

}  // namespace

nlohmann::json to_json(const LlamaConfig& config) {
  nlohmann::json json = nlohmann::json::object();
  for_each_field(config, [&](const char* name, const auto& field) { json[name] = field; });
  json["rope_type"] = name_of(kRopeTypes, config.rope_scaling.type);
  json["expert_naming"] = name_of(kExpertNamings, config.expert_naming);
  return json;
}

LlamaConfig llama_config_from_json(const nlohmann::json& json) {
  if (!json.is_object()) {
    throw std::invalid_argument("model config: expected a JSON object, found " +
                                json.dump().substr(0, 40));
  }
  LlamaConfig config;
  std::size_t known = 0;
  for_each_field(config, [&](const char* name, auto& field) {
    const auto found = json.find(name);
    if (found == json.end()) return;
    ++known;
    using Field = std::decay_t<decltype(field)>;
    if (!has_type<Field>(*found)) {
      throw std::invalid_argument(std::string("model config: \"") + name + "\" is " +
                                  found->dump().substr(0, 40) + ", of the wrong type");
    }
    field = found->get<Field>();
  });
  read_enum(json, "rope_type", kRopeTypes, config.rope_scaling.type);
  read_enum(json, "expert_naming", kExpertNamings, config.expert_naming);
  for (const char* name : kEnumFields) known += json.contains(name) ? 1 : 0;
  if (known != json.size()) {
    for (const auto& item : json.items()) {
      const auto fields = to_json(LlamaConfig{});
      if (!fields.contains(item.key())) {
        throw std::invalid_argument("model config: unknown field \"" + item.key() + "\"");
      }
    }
  }
  return config;
}

}  // namespace fsdp::models
