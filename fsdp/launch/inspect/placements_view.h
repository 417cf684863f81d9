// --where NAME: which files hold a tensor, and where in them.
//
// For a distributed checkpoint, every rank file holding part of the
// parameter (its elements, the shard offsets, the file's byte range) and
// every rank's padding, from checkpoint::CheckpointReader::placements (that
// is, from FlatLayout, the runtime's own shard arithmetic). For an HF
// checkpoint, the file holding the key, its dtype, shape and byte range.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <optional>
#include <string>

#include "fsdp/checkpoint/checkpoint_reader.h"
#include "fsdp/launch/inspect/tensor_source.h"

namespace fsdp::inspect {

struct HfPlacement {
  std::string file;             // the file's path
  std::int64_t file_begin = 0;  // absolute byte offsets in the file
  std::int64_t file_end = 0;
};

struct WhereReport {
  TensorInfo tensor;
  int world_size = 0;                                    // distributed checkpoints
  std::optional<checkpoint::ParameterPlacements> ranks;  // distributed checkpoints
  std::optional<HfPlacement> hf;                         // HF checkpoints
};

// Throws checkpoint::CheckpointError for an unknown name or an unreadable file.
WhereReport where(TensorSource& source, std::string_view name);

std::string where_text(const WhereReport& report);
// {"name", "shape", "dtype", "declared_dtype", ..., and for a distributed checkpoint
//  "stage", "world_size", "flat_range", "shard_numel", "stage_unpadded_numel",
//  "pieces": [{"rank", "file", "parameter_range", "shard_range", "file_bytes"}],
//  "padding": [{"rank", "shard_range", "file_bytes"}]; for HF "file", "file_bytes"}.
// Ranges are [begin, end) pairs.
nlohmann::json where_json(const WhereReport& report);

}  // namespace fsdp::inspect
