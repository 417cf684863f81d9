// The runtime's own checkpoint: a directory holding one safetensors file per
// rank with that rank's shards, and an index (specified in
// docs/checkpoint-format.md; the names are in checkpoint_format.h).
//
//   DIR/index.json                          format, world size, step, training
//                                           config, every stage's layout, and
//                                           every file's size and block checksums
//   DIR/rank-00000-of-00004.safetensors     "<stage>/weight_shard" (always),
//   ...                                     "<stage>/gradient_shard" (when asked),
//                                           "<stage>/exp_avg", "<stage>/exp_avg_sq" (with an
//                                           optimizer)
//
// Saving is atomic: everything is written into DIR.partial beside the target,
// each file fsynced, the index written last, and then the directory swapped
// into place (file_io.h, replace_directory); a crash at any moment leaves the
// previous checkpoint loadable. A path that exists but is not a checkpoint is
// never replaced.
//
// Loading works at any world size. A parameter's flat offset does not depend
// on the world size (fsdp/flat_layout.h), so resharding is intersecting each
// new shard's range with the old ones and copying the overlaps; padding is
// never read. At the same world size each rank reads exactly its own file,
// in one pass. Checksums are verified on every block read, and the weights
// are verified like an HF import (load_verification.h).
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

#include "fsdp/checkpoint/checkpoint_format.h"
#include "fsdp/checkpoint/checkpoint_index.h"
#include "fsdp/fsdp.h"

namespace fsdp::stages {
class ShardedAdamW;
}

namespace fsdp::checkpoint {

// The per-stage arrays a rank file holds, each a tensor "<stage>/<name>".
enum class ShardArray {
  kWeights,    // "<stage>/weight_shard" (always present)
  kGradients,  // "<stage>/gradient_shard" (saved with SaveOptions::gradients)
  kExpAvg,     // "<stage>/exp_avg" (saved with an optimizer)
  kExpAvgSq,   // "<stage>/exp_avg_sq" (saved with an optimizer)
};
// "weight_shard", "gradient_shard", "exp_avg", "exp_avg_sq".
std::string_view shard_array_name(ShardArray array);
// "<stage>/<shard_array_name>": the tensor's key in a rank file.
std::string shard_tensor_name(const std::string& stage, ShardArray array);

struct SaveOptions {
  std::int64_t step = 0;
  // Stored as is; for the training program to resume with the same settings.
  nlohmann::json training_config = nlohmann::json::object();
  bool gradients = false;  // also save the gradient shards
  std::int64_t checksum_block_bytes = std::int64_t{4} << 20;
  // Device shards are copied to the host through a chunk of this size.
  std::int64_t chunk_bytes = std::int64_t{64} << 20;
};

// Writes a checkpoint of `stages` (and of `optimizer`'s state and step count,
// when not null) to `directory`, atomically. Collective over the stages'
// group; all ranks must see the same file system. On any rank's failure
// every rank throws with its message, and the previous checkpoint at
// `directory` is untouched. Files the runtime did not write in `directory`
// (check_save_directory) fail the save rather than be deleted; a symbolic
// link at `directory` is followed and left in place.
void save_checkpoint(const std::filesystem::path& directory, const std::vector<Fsdp*>& stages,
                     const stages::ShardedAdamW* optimizer, const SaveOptions& options);

struct LoadCheckpointOptions {
  bool gradients = false;  // load the gradient shards too (the checkpoint must have them)
  std::int64_t chunk_bytes = std::int64_t{64} << 20;
};

// Loads `directory` into `stages` (and `optimizer`, when not null: its state
// and step count; the checkpoint must then have optimizer state), from any
// world size. Collective. Throws on every rank, with the failing rank's
// message, for: a missing or corrupt checkpoint, a checksum mismatch, or a
// layout that is not this model's (stage or parameter names, shapes, dtypes).
// Returns the index (step, training config). When the failure comes after the
// shards started to be overwritten, the weight shards are left all NaN.
// Values are not checked for NaN: the checksums say they are what was saved.
CheckpointIndex load_checkpoint(const std::filesystem::path& directory,
                                const std::vector<Fsdp*>& stages, stages::ShardedAdamW* optimizer,
                                const LoadCheckpointOptions& options = {});

}  // namespace fsdp::checkpoint
