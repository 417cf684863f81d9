// Safe loading, in the style of Fast-LLM: before a load, every weight
// element is set to NaN (padding to zero); while loading, every element
// written is counted per parameter; afterwards every rank checks that its
// counts equal what it owns, the counts are summed over ranks and must equal
// each parameter's size, and no NaN may remain. A parameter that a rule
// forgot, an expert that was skipped or a range written twice cannot pass
// silently as random or stale weights (ANCHORS.md's reported failures).
#pragma once

#include <cstdint>
#include <vector>

#include "fsdp/fsdp.h"

namespace fsdp::checkpoint {

class LoadVerification {
 public:
  // Invalidates `stages` and pre-fills their weight shards: NaN on every
  // element that belongs to a parameter, zero on padding. Local.
  explicit LoadVerification(std::vector<Fsdp*> stages);

  // Records that `count` elements of parameter `parameter_index` of stage `stage_index` were
  // written.
  void count(std::size_t stage_index, std::size_t parameter_index, std::int64_t count) {
    counts_[stage_index][parameter_index] += count;
  }

  // The local checks: this rank's counts equal what it owns, and no NaN is
  // left in its shards. Local; run it inside run_agreeing_on_failure() with
  // the loading itself, so that one rank's failure reaches every rank.
  // Throws CheckpointError naming `source` (what was loaded), the stage, the
  // parameter, and the expected and written counts or the NaNs left.
  void verify_local(const std::string& source) const;
  // The global check: the counts summed over ranks equal every parameter's
  // size. Collective (one all-reduce over the first stage's group); throws the
  // same CheckpointError on every rank.
  void verify_global(const std::string& source) const;

 private:
  std::vector<Fsdp*> stages_;
  std::vector<std::vector<std::int64_t>> counts_;
};

}  // namespace fsdp::checkpoint
