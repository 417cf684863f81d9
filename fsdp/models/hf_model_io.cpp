#include "fsdp/models/hf_model_io.h"

#include <fstream>
#include <stdexcept>

#include "fsdp/checkpoint/checkpoint_error.h"
#include "fsdp/checkpoint/conversion_rules.h"
#include "fsdp/checkpoint/hf_checkpoint.h"
#include "fsdp/checkpoint/hf_export.h"
#include "fsdp/models/hf_config.h"
#include "fsdp/models/llama_conversion.h"

namespace fsdp::models {
namespace {

namespace fs = std::filesystem;
using checkpoint::SafetensorsDtype;

const std::pair<const char*, SafetensorsDtype> kExportDtypes[] = {
    {"bfloat16", SafetensorsDtype::kBFloat16},
    {"float16", SafetensorsDtype::kFloat16},
    {"float32", SafetensorsDtype::kFloat32}};

// What transformers keeps beside the weights and we pass through unchanged.
bool is_companion_file(const fs::path& file) {
  const std::string name = file.filename().string();
  return name == "generation_config.json" || name == "tokenizer.json" ||
         name == "tokenizer_config.json" || name == "special_tokens_map.json" ||
         name == "tokenizer.model" || name == "vocab.json" || name == "merges.txt" ||
         name == "added_tokens.json" || name == "chat_template.jinja";
}

}  // namespace

SafetensorsDtype export_dtype_from_name(const std::string& name) {
  for (const auto& [spelling, dtype] : kExportDtypes) {
    if (name == spelling) return dtype;
  }
  throw std::invalid_argument("export dtype \"" + name +
                              "\" (expected bfloat16, float16 or float32)");
}

std::string export_dtype_name(SafetensorsDtype dtype) {
  for (const auto& [spelling, candidate] : kExportDtypes) {
    if (candidate == dtype) return spelling;
  }
  throw std::invalid_argument("export dtype " + std::string(checkpoint::dtype_name(dtype)) +
                              " (expected BF16, F16 or F32)");
}

SafetensorsDtype hf_checkpoint_dtype(const fs::path& directory) {
  const checkpoint::HfCheckpoint hf(directory);
  for (const auto& file : hf.files()) {
    for (const auto& tensor : file->tensors()) {
      if (checkpoint::is_floating_point(tensor.dtype)) return tensor.dtype;
    }
  }
  return SafetensorsDtype::kFloat32;
}

nlohmann::json export_hf_model(const fs::path& directory, const LlamaConfig& model,
                               const HfExportSource& source, SafetensorsDtype dtype,
                               const std::vector<Fsdp*>& stages) {
  if (stages.empty()) throw std::invalid_argument("export_hf_model: no stages");
  // Every rank builds the config (cheap, and each needs its expert naming).
  const HfModelConfig exported =
      hf_config_for_export(model, source.config, export_dtype_name(dtype));
  const nlohmann::json& config = exported.source;
  LlamaConfig named = model;
  named.expert_naming = exported.model.expert_naming;

  checkpoint::ExportOptions options;
  options.dtype = dtype;
  // Into the staging directory, so that the export appears whole or not at all.
  options.write_companions = [&](const fs::path& staging) {
    const fs::path config_path = staging / "config.json";
    std::ofstream file(config_path);
    file << config.dump(2) << "\n";
    file.close();
    if (!file) {
      throw checkpoint::CheckpointError("HF export: cannot write " + config_path.string());
    }
    if (source.directory.empty()) return;
    std::error_code error;
    for (const auto& entry : fs::directory_iterator(source.directory, error)) {
      if (!entry.is_regular_file() || !is_companion_file(entry.path())) continue;
      fs::copy_file(entry.path(), staging / entry.path().filename(),
                    fs::copy_options::overwrite_existing, error);
      if (error) {
        throw checkpoint::CheckpointError("HF export: cannot copy " + entry.path().string() +
                                          " into " + staging.string() + ": " + error.message());
      }
    }
    if (error) {
      throw checkpoint::CheckpointError("HF export: cannot list " + source.directory.string() +
                                        ": " + error.message());
    }
  };
  checkpoint::export_hf_checkpoint(directory, llama_conversion_rules(named), stages, options);
  return config;
}

}  // namespace fsdp::models
