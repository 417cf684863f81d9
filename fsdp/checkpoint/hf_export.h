// Writing the model back as a HuggingFace checkpoint: the inverse of the
// conversion rules (unstack, unfuse, transpose back), one checkpoint tensor at
// a time, split into files of bounded size with a
// model.safetensors.index.json (a single model.safetensors when everything
// fits in one file, as transformers writes it).
//
// Memory: one checkpoint tensor per rank at a time (each tensor is gathered
// from the shards that own its pieces, by broadcasts from the owners), never
// a whole parameter of stacked experts, never the model. Files are written
// by ranks in turn (file f by rank f mod world size), into DIR.partial, and
// the directory is swapped into place when all are synced.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "fsdp/checkpoint/conversion_rules.h"
#include "fsdp/fsdp.h"

namespace fsdp::checkpoint {

struct ExportOptions {
  // transformers' default shard size is 5 GB.
  std::int64_t max_file_bytes = std::int64_t{5} * 1000 * 1000 * 1000;
  // The dtype written; by default each parameter's declared dtype.
  std::optional<SafetensorsDtype> dtype;
  std::map<std::string, std::string> metadata = {{"format", "pt"}};
  // Run on rank 0 with the staging directory once every tensor file is
  // written, before the swap: the companion files (config.json, the
  // tokenizer's) appear with the tensors or not at all. Must not issue
  // collectives; a throw fails the export like a failed write.
  std::function<void(const std::filesystem::path& staging)> write_companions;
};

// Throws CheckpointError when `directory` exists and is neither empty nor an
// HF checkpoint (export refuses to replace it), listing what it holds. For
// checking before a long run.
void check_export_directory(const std::filesystem::path& directory);

// Collective over the stages' group. Throws a CheckpointError on every rank,
// with the failing rank's message, when a parameter has no rule, a file
// cannot be written (a full disk on any writing rank included),
// `directory` exists and is not an HF checkpoint, or it holds files the
// export would not write again (anything but *.safetensors and the index
// that is not among the new files and companions: never deleted); `directory`
// is then left as it was. A symbolic link at `directory` is followed and
// left in place.
void export_hf_checkpoint(const std::filesystem::path& directory, const ConversionRules& rules,
                          const std::vector<Fsdp*>& stages, const ExportOptions& options = {});

}  // namespace fsdp::checkpoint
