// --slice: numpy-like indexing of one parameter, one comma-separated item per
// leading dimension:
//   "5"       index 5 (the dimension is dropped); negative counts from the end
//   "1:3"     indices 1 and 2;  ":4" the first four;  "-2:" the last two
//   "::2"     every other index; "1:9:3" indices 1, 4, 7 (steps are positive)
//   ":"       the whole dimension (as are dimensions the spec does not name)
// Out-of-range bounds of a range are clipped, as in Python; an out-of-range
// index is an error.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace fsdp::inspect {

struct DimensionSlice {
  bool is_index = false;  // a single index, which drops the dimension
  std::int64_t index = 0;
  std::optional<std::int64_t> start, stop;
  std::int64_t step = 1;
};

struct SliceSpec {
  std::vector<DimensionSlice> dimensions;
};

// Throws UsageError naming the bad item.
SliceSpec parse_slice(std::string_view text);

// A slice resolved against a shape: the selected indices of every dimension.
struct Selection {
  std::vector<std::vector<std::int64_t>> indices;  // per dimension of the shape, increasing
  std::vector<bool> kept;                          // false where an index dropped the dimension

  // The shape of the selection (kept dimensions only).
  std::vector<std::int64_t> shape() const;
  std::int64_t numel() const;
};

// Throws UsageError when the spec names more dimensions than
// `shape` has or an index is out of range.
Selection resolve_slice(const SliceSpec& spec, const std::vector<std::int64_t>& shape);

}  // namespace fsdp::inspect
