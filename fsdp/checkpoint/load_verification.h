// Safe loading, after Fast-LLM's: a load must write every weight element it
// owns exactly once before it is declared a success. Fast-LLM checks this by
// pre-filling with NaN and scanning for NaN afterwards; that is two extra
// passes over every shard, more than the load itself costs from a warm page
// cache. Here every write is recorded as a range instead (O(writes), not
// O(elements)), and the check is exact: on each rank the ranges must not
// overlap, each must lie inside one slice this rank owns of the parameter it
// was written for, and their sizes must add up to what the rank owns; summed
// over ranks, the sizes must equal every parameter's size. A parameter that
// a rule forgot, an expert that was skipped or a range written twice cannot
// pass silently as random or stale weights (skipped expert keys left at
// random initialisation are a failure users of other loaders report).
//
// Usage, on every rank of the stages' group:
//   LoadVerification verification(stages);     // invalidates, zeroes padding
//   ... write, calling record() for each write ...
//   verification.verify_local(source);         // inside run_agreeing_on_failure()
//   verification.verify_global(source);        // collective
// and, when the load fails, poison() so that no half-loaded shard looks valid.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "fsdp/fsdp.h"

namespace fsdp::checkpoint {

class LoadVerification {
 public:
  // Invalidates `stages` (their buffers no longer match the shards) and zeroes
  // the padding of their weight shards. Local.
  explicit LoadVerification(std::vector<Fsdp*> stages);

  // Records that elements [shard_offset, shard_offset + count) of the weight
  // shard of stage `stage_index` were written, all for parameter
  // `parameter_index`. Consecutive writes of one parameter merge into one range.
  void record(std::size_t stage_index, std::size_t parameter_index, std::int64_t shard_offset,
              std::int64_t count);

  // The local check: this rank's writes cover exactly the slices it owns.
  // Local; run it inside run_agreeing_on_failure() with the loading itself, so
  // that one rank's failure reaches every rank. Throws CheckpointError naming
  // `source` (what was loaded), the stage and the parameter, with the range
  // written twice or outside the parameter, or the owned and written counts.
  void verify_local(const std::string& source) const;
  // The global check: the counts summed over ranks equal every parameter's
  // size. Collective (one all-reduce over the first stage's group); throws the
  // same CheckpointError on every rank.
  void verify_global(const std::string& source) const;

  // After a failed load: fills every weight shard with NaN (padding zero), so
  // that nothing half-loaded can be mistaken for weights. Local.
  void poison() const;

 private:
  struct Written {
    std::size_t parameter_index;
    ElementRange shard_range;
  };
  std::vector<Fsdp*> stages_;
  std::vector<std::vector<Written>> written_;  // per stage, in the order written
};

}  // namespace fsdp::checkpoint
