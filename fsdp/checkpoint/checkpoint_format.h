// The names of the distributed checkpoint's format (docs/checkpoint-format.md
// is its specification): the directory's files, the keys of index.json and of
// each rank file's safetensors metadata. The writer and the reader share
// these, so that neither can drift from the other or from the document.
#pragma once

namespace fsdp::checkpoint {

inline constexpr const char* kCheckpointFormat = "fsdp-runtime-checkpoint";
// Bumped when a reader of the previous version would misread a new checkpoint.
inline constexpr int kCheckpointFormatVersion = 1;
inline constexpr const char* kCheckpointIndexFileName = "index.json";

// index.json: {format, format_version, world_size, step, training_config,
// gradients, optimizer, optimizer_steps, stages: [...], files: [...]}.
namespace index_key {
inline constexpr const char* kFormat = "format";
inline constexpr const char* kFormatVersion = "format_version";
inline constexpr const char* kWorldSize = "world_size";
inline constexpr const char* kStep = "step";
inline constexpr const char* kTrainingConfig = "training_config";
inline constexpr const char* kGradients = "gradients";
inline constexpr const char* kOptimizer = "optimizer";
inline constexpr const char* kOptimizerSteps = "optimizer_steps";
inline constexpr const char* kStages = "stages";
inline constexpr const char* kFiles = "files";
// A stage: {name, shard_dtype, unpadded_numel, shard_numel, parameters: [...]}.
inline constexpr const char* kName = "name";
inline constexpr const char* kShardDtype = "shard_dtype";
inline constexpr const char* kUnpaddedNumel = "unpadded_numel";
inline constexpr const char* kShardNumel = "shard_numel";
inline constexpr const char* kParameters = "parameters";
// A parameter: {name, shape, dtype, flat_range: [begin, end]}.
inline constexpr const char* kShape = "shape";
inline constexpr const char* kDtype = "dtype";
inline constexpr const char* kFlatRange = "flat_range";
// A file: {name, rank, bytes, checksum: {algorithm, block_bytes, blocks: [...]}}.
inline constexpr const char* kRank = "rank";
inline constexpr const char* kBytes = "bytes";
inline constexpr const char* kChecksum = "checksum";
inline constexpr const char* kAlgorithm = "algorithm";
inline constexpr const char* kBlockBytes = "block_bytes";
inline constexpr const char* kBlocks = "blocks";
}  // namespace index_key

// A rank file's safetensors "__metadata__": {format, rank, world_size}, all strings.
namespace rank_file_metadata_key {
inline constexpr const char* kFormat = "format";
inline constexpr const char* kRank = "rank";
inline constexpr const char* kWorldSize = "world_size";
}  // namespace rank_file_metadata_key

}  // namespace fsdp::checkpoint
