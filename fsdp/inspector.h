// The inspector: a stage's true weights, read from the shards.
//
// Never reads the weight buffer, so it tells the truth whether or not the
// stage is restored -- the answer to "my parameters are all zeros"
// and to "which rank holds which weights?". The collective functions are
// collective over the stage's group: every rank calls them with the same
// arguments, in the same order; each rank contributes only its own slice.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "fsdp/fsdp.h"

namespace fsdp {

// Statistics of one parameter's true values.
// NaN elements are counted in nan_count and left out of everything else, so one
// NaN does not hide the rest; infinities are included (and counted).
struct ParameterStatistics {
  std::int64_t numel = 0;
  std::int64_t nan_count = 0;
  std::int64_t inf_count = 0;
  std::int64_t nonzero_count = 0;  // elements != 0, NaN included
  double sum = 0;
  double mean = 0;  // NaN when there is no non-NaN element
  double std = 0;   // sample standard deviation (n - 1), as torch.std; 0 for one value
  double min = 0;   // min, max and abs_max are NaN when there is no non-NaN element
  double max = 0;
  double abs_max = 0;
};

// Statistics of a part of a parameter, mergeable across ranks in any grouping.
struct PartialStatistics {
  std::int64_t numel = 0;
  std::int64_t nan_count = 0;
  std::int64_t inf_count = 0;
  std::int64_t nonzero_count = 0;
  std::int64_t value_count = 0;  // non-NaN elements
  double sum = 0;
  double mean = 0;
  double squared_deviations = 0;  // sum of (x - mean)^2 over the non-NaN elements
  double min = 0;
  double max = 0;
  double abs_max = 0;
};

// Statistics of the elements of `values` (any floating dtype, any device), in float64.
PartialStatistics partial_statistics(const at::Tensor& values);
// Combines parts with Chan's parallel update, so the result does not depend on
// how the parameter was split across ranks beyond float64 rounding.
ParameterStatistics merge_statistics(const std::vector<PartialStatistics>& parts);

// This rank's piece of `name`, flattened: a view of the weight shard (possibly
// empty). Local, not collective.
at::Tensor owned_weight_part(const Fsdp& fsdp, std::string_view name);

// The whole parameter, in its declared shape and the shard dtype, on the CPU,
// on every rank. Collective: each owning rank broadcasts its piece.
at::Tensor read_parameter(const Fsdp& fsdp, std::string_view name);

// The parameter's statistics, on every rank. Collective.
ParameterStatistics parameter_statistics(const Fsdp& fsdp, std::string_view name);

// Where `name` lives: each owning rank with the parameter elements it holds and
// their offsets in its shard. Pure (layout only).
std::vector<OwnedSlice> parameter_placements(const FlatLayout& layout, std::string_view name);

// A human-readable table of parameter_placements plus the padding of every
// rank, e.g. "rank 1: elements [40, 100) at shard offsets [0, 60)".
std::string describe_placements(const FlatLayout& layout, std::string_view name);

}  // namespace fsdp
