// LlamaConfig as JSON, so that a checkpoint's training config says which model
// it holds ("model": {...} in index.json, written by fsdp-train) and tools such
// as shard-inspect can rebuild the conversion rules from it.
#pragma once

#include <nlohmann/json.hpp>

#include "fsdp/models/llama.h"

namespace fsdp::models {

// Every field, by its C++ name: {"vocabulary": 64, "hidden": 32, ...}.
nlohmann::json to_json(const LlamaConfig& config);
// The inverse. Fields that are absent keep LlamaConfig's defaults; a field of
// the wrong type, or an unknown field, throws std::invalid_argument naming it.
LlamaConfig llama_config_from_json(const nlohmann::json& json);

}  // namespace fsdp::models
