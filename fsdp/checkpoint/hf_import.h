// Streaming a HuggingFace checkpoint straight into the shards.
//
// Plan from the headers only (conversion_rules.h), then each rank reads only
// the bytes that land in its own shard ranges: because a piece's elements
// land in increasing parameter order, the part of a checkpoint tensor that
// falls in a rank's range is one interval of it, read with pread and
// converted on the way in. Across ranks every checkpoint byte is read once
// (plus the headers, which every rank reads). Memory: the shards plus one
// staging chunk of at most ImportOptions::chunk_bytes (two for transposed
// tensors), whatever the number of experts or layers; same-dtype runs of at
// least 64 KiB skip the chunk and are read straight into the shard.
// Verified like Fast-LLM's safe loading, with the written ranges recorded
// rather than NaN pre-filled and scanned for (load_verification.h).
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <vector>

#include "fsdp/checkpoint/conversion_rules.h"
#include "fsdp/fsdp.h"

namespace fsdp::checkpoint {

struct LoadProgress {
  std::int64_t bytes_done = 0;   // this rank's checkpoint bytes read so far
  std::int64_t bytes_total = 0;  // this rank's share, known from the plan
  double seconds = 0;
};

struct ImportOptions {
  std::int64_t chunk_bytes = std::int64_t{64} << 20;
  // A NaN in the checkpoint is an error naming the tensor and its file. The
  // check reads each piece right after it is read, while it is in cache; on a
  // warm page cache it is still about a fifth of the load's time (2-core CI
  // machine, docs/PERFORMANCE.md). Turn it off to load a checkpoint known to
  // hold NaN, or to save that time.
  bool reject_nan = true;
  // Called on every rank about every progress_interval_seconds, and once at the end.
  std::function<void(const LoadProgress&)> progress;
  double progress_interval_seconds = 2.0;
};

struct LoadReport {
  std::int64_t bytes_read = 0;            // by this rank, headers included
  std::int64_t bytes_read_all_ranks = 0;  // summed over the group
  std::int64_t checkpoint_bytes = 0;      // tensor data in the checkpoint
  double seconds = 0;                     // wall time on this rank, planning included
};

// Loads `path` (an HF file or directory, hf_checkpoint.h) into the weight
// shards of `stages` through `rules`. Collective over the stages' group
// (every stage must share one group). Every rank ends with the same outcome:
// on any rank's error (a bad file, a missing or unused key, a shape or dtype
// mismatch, a failed verification) every rank throws, with that message.
// After a failure that reached the loading itself, the weight shards hold NaN
// (a half-loaded model must not look valid); after one found while planning
// (a missing key, a bad header), they are untouched.
LoadReport import_hf_checkpoint(const std::filesystem::path& path, const ConversionRules& rules,
                                const std::vector<Fsdp*>& stages,
                                const ImportOptions& options = {});

}  // namespace fsdp::checkpoint
