#include "models/llama_config_json.h"

#include <stdexcept>
#include <string>

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
}

template <typename Field>
bool has_type(const nlohmann::json& value) {
  if constexpr (std::is_same_v<Field, bool>) {
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
  return json;
}

LlamaConfig llama_config_from_json(const nlohmann::json& json) {
  if (!json.is_object()) {
    throw std::invalid_argument("model config: expected a JSON object, found " + json.dump());
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
                                  found->dump() + ", of the wrong type");
    }
    field = found->get<Field>();
  });
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
