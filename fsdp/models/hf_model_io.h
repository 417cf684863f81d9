// A whole HuggingFace model directory in and out: config.json, the weights
// through the conversion rules, and the files transformers needs beside them.
#pragma once

#include <filesystem>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "fsdp/checkpoint/safetensors_format.h"
#include "fsdp/fsdp.h"
#include "fsdp/models/llama.h"

namespace fsdp::models {

// "bfloat16" -> BF16, "float32" -> F32, "float16" -> F16 (config.json's dtype
// spellings, as --export-dtype takes them). Throws std::invalid_argument naming
// the value and the supported ones.
checkpoint::SafetensorsDtype export_dtype_from_name(const std::string& name);
std::string export_dtype_name(checkpoint::SafetensorsDtype dtype);

// The dtype of the floating-point tensors of the HF checkpoint at `directory`
// (the first one found; real checkpoints use one), or F32 when it has none.
checkpoint::SafetensorsDtype hf_checkpoint_dtype(const std::filesystem::path& directory);

struct HfExportSource {
  // The source's config.json (null: write a fresh one).
  nlohmann::json config;
  // Where to copy generation_config.json and tokenizer files from ("" for none).
  std::filesystem::path directory;
};

// Writes `stages` to `directory` as an HF model transformers loads:
// the tensors in `dtype` under the names the exported config's architecture
// uses (checkpoint::export_hf_checkpoint), config.json
// (hf_config_for_export), and the source's generation_config.json and
// tokenizer files copied unchanged. Collective over the stages' group; throws
// on every rank when any rank fails. Returns the config.json written.
nlohmann::json export_hf_model(const std::filesystem::path& directory, const LlamaConfig& model,
                               const HfExportSource& source, checkpoint::SafetensorsDtype dtype,
                               const std::vector<Fsdp*>& stages);

}  // namespace fsdp::models
