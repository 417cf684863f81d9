// Reading a distributed checkpoint (distributed_checkpoint.h) without a
// model, without MPI and without loading it: any element range of any
// parameter, straight from the rank files, for shard-inspect and other tools.
//
// Where a parameter's elements are comes from FlatLayout (fsdp/flat_layout.h),
// the runtime's one piece of shard arithmetic, rebuilt from the index: a
// parameter's flat range does not depend on the world size, and rank r's file
// holds "<stage>/weight_shard" = the stage's flat elements
// [r * shard_numel, (r + 1) * shard_numel). A read intersects the range asked
// for with those of the rank files and reads the overlaps, verifying the
// checksum of every block it reads (verified_reader.h). Padding is never read.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "fsdp/checkpoint/distributed_checkpoint.h"
#include "fsdp/checkpoint/verified_reader.h"
#include "fsdp/element_type.h"
#include "fsdp/flat_layout.h"

namespace fsdp::checkpoint {

// A parameter of the checkpoint: its stage and its index in the stage.
struct ParameterLocation {
  std::size_t stage = 0;
  std::size_t parameter = 0;
};

// One rank file's part of a parameter.
struct RankPlacement {
  int rank = 0;
  std::string file;              // the file's name in the checkpoint directory
  ElementRange parameter_range;  // elements of the flattened parameter
  ElementRange shard_range;      // the same elements as offsets in that rank's shard
  std::int64_t file_begin = 0;   // the same elements as absolute byte offsets in the file
  std::int64_t file_end = 0;
};

// A rank's padding: shard offsets no parameter uses (possibly the whole shard).
struct RankPadding {
  int rank = 0;
  ElementRange shard_range;
  std::int64_t file_begin = 0;  // absolute byte offsets in the file
  std::int64_t file_end = 0;
};

struct ParameterPlacements {
  std::string parameter;
  std::string stage;
  ElementRange flat_range;                // in the stage's flat index space
  std::int64_t shard_numel = 0;           // elements per rank file, padding included
  std::int64_t stage_unpadded_numel = 0;  // the stage's parameter elements
  std::vector<RankPlacement> pieces;      // in rank order; empty for a zero-element parameter
  std::vector<RankPadding> padding;       // every rank with padding, in rank order
};

// Up to `count` of `candidates` closest to `name`, closest first (names that
// contain `name`, then by edit distance), for "no parameter named" messages.
std::vector<std::string> close_names(std::string_view name,
                                     const std::vector<std::string>& candidates,
                                     std::size_t count = 5);

// Thread-safety: none (readers keep staging buffers); use one object per thread.
class CheckpointReader {
 public:
  // Reads and validates `directory`/index.json (read_checkpoint_index) and
  // checks that every stage's flat ranges are what FlatLayout makes of its
  // parameters. Rank files are opened when first read. Reads go through a
  // staging buffer of `chunk_bytes`: one, held by the rank file read last
  // (so reading in flat order reads every block once, and memory does not
  // grow with the world size).
  // Throws CheckpointError naming the file and the field.
  explicit CheckpointReader(const std::filesystem::path& directory,
                            std::int64_t chunk_bytes = std::int64_t{64} << 20);
  ~CheckpointReader();
  CheckpointReader(const CheckpointReader&) = delete;
  CheckpointReader& operator=(const CheckpointReader&) = delete;

  const CheckpointIndex& index() const { return index_; }
  // index.json's path, for messages.
  std::string source() const;

  // Every parameter, stage by stage, in flat order.
  std::vector<ParameterLocation> parameters() const;
  std::optional<ParameterLocation> lookup(std::string_view name) const;
  // Throws CheckpointError naming `name` and listing a few close names.
  ParameterLocation find(std::string_view name) const;

  const StageRecord& stage(const ParameterLocation& location) const;
  const ParameterSpec& parameter(const ParameterLocation& location) const;
  std::int64_t numel(const ParameterLocation& location) const;
  // The stage's layout at the checkpoint's world size.
  const FlatLayout& layout(std::size_t stage) const { return *layouts_.at(stage); }
  // The element type of the stage's shards (read() returns tensors of it).
  ElementType shard_type(std::size_t stage) const;

  // Whether the checkpoint holds `array` (weights always do).
  bool has(ShardArray array) const;

  // Elements `elements` of the flattened parameter, read from `array`, as a
  // 1-D CPU tensor of the shard type. Verifies the checksum of every block read.
  // Throws CheckpointError for a range outside the parameter, an array the
  // checkpoint lacks, and (naming the file) a missing, truncated or corrupt
  // rank file or a shard tensor of the wrong dtype or size.
  at::Tensor read(const ParameterLocation& location, ElementRange elements,
                  ShardArray array = ShardArray::kWeights);

  // Which rank files hold the parameter's weights, and every rank's padding.
  // Opens the rank files (for their data offsets); throws CheckpointError as read() does.
  ParameterPlacements placements(const ParameterLocation& location);

 private:
  VerifiedReader& reader(int rank);
  // The checked entry of `array` of `stage` in rank `rank`'s file.
  const TensorEntry& shard_entry(int rank, std::size_t stage, ShardArray array);

  CheckpointIndex index_;
  std::int64_t chunk_bytes_;
  std::vector<std::unique_ptr<FlatLayout>> layouts_;
  std::vector<std::unique_ptr<VerifiedReader>> readers_;  // by rank, opened when first read
  int staging_rank_ = -1;                                 // the reader holding its staging buffer
};

}  // namespace fsdp::checkpoint
