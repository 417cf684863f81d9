// The index of the runtime's own checkpoint (distributed_checkpoint.h;
// specified in docs/checkpoint-format.md, names in checkpoint_format.h): what
// it records, and its reader. Kept apart from saving and loading, which need
// libtorch, so that the reader of this untrusted file can be fuzzed and
// sanitized on its own (tests/fuzz).
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

#include "fsdp/flat_layout.h"

namespace fsdp::checkpoint {

// "rank-00001-of-00004.safetensors"
std::string rank_file_name(int rank, int world_size);
// Whether `name` has that form (of any rank and world size).
bool is_rank_file_name(const std::string& name);

// Where a save interrupted between its two renames left the previous
// checkpoint: `directory`.previous.
std::filesystem::path previous_checkpoint_path(const std::filesystem::path& directory);

// Throws CheckpointError unless a checkpoint can be saved at `directory`
// without losing anything: absent, an empty directory, or a checkpoint
// holding nothing but index.json and rank files (a link is followed). For
// checking before a long run; save_checkpoint checks the same.
void check_save_directory(const std::filesystem::path& directory);

// One stage as recorded in the index.
struct StageRecord {
  std::string name;
  std::string shard_dtype;  // element_type_name, e.g. "float32"
  std::int64_t unpadded_numel = 0;
  std::int64_t shard_numel = 0;
  std::vector<ParameterSpec> parameters;  // name, shape, dtype (init is not stored)
  std::vector<ElementRange> flat_ranges;
};

struct FileRecord {
  std::string name;
  int rank = 0;        // whose shards it holds: its position in the index
  int world_size = 0;  // of the saving job
  std::int64_t bytes = 0;
  std::int64_t checksum_block_bytes = 0;
  std::vector<std::uint64_t> checksums;
};

struct CheckpointIndex {
  std::filesystem::path directory;  // where it was read from
  int world_size = 0;
  std::int64_t step = 0;
  nlohmann::json training_config;
  bool has_gradients = false;
  bool has_optimizer = false;
  std::int64_t optimizer_steps = 0;
  std::vector<StageRecord> stages;
  std::vector<FileRecord> files;  // files[r] is rank r's
};

// Validates the text of an index.json (untrusted: parse_untrusted_json) as
// the index of a checkpoint in `directory`, without touching the file system.
// Every number is range-checked, every file must be named as its position's
// rank file (rank_file_name) and agree with its "rank" field, and each file
// needs one checksum per block. Throws CheckpointError starting with `source`
// (the index's path, for messages) and naming the field.
CheckpointIndex parse_checkpoint_index(std::string_view text,
                                       const std::filesystem::path& directory,
                                       const std::string& source);

// Reads and validates `directory`/index.json (as parse_checkpoint_index; the
// file must be a regular file, and no rank file may be a link leading out of
// `directory`). When `directory` does not exist but `directory`.previous
// holds a checkpoint (a save interrupted where the file system cannot swap
// directories atomically), reads that one. When `directory` is a series of
// checkpoints (checkpoint_series.h), reads the latest complete one;
// CheckpointIndex::directory says which. Throws CheckpointError naming the
// file and the field.
CheckpointIndex read_checkpoint_index(const std::filesystem::path& directory);

}  // namespace fsdp::checkpoint
