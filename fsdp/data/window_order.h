// The order in which training draws windows: epoch after epoch, each a
// permutation of all windows that depends only on (seed, epoch). Draw k of a
// run is window_of(k), so a step's global batch (draws [(step - 1) * batch,
// step * batch)) is the same at every world size, a resumed run continues the
// exact order from the step alone, and an epoch ends mid-batch cleanly: the
// batch's remaining rows come from the next epoch's permutation.
//
// The permutation is computed, not stored: a 6-round Feistel network over the
// smallest power-of-four domain that holds the windows, walked until it lands
// inside them (at most 4 tries expected). Memory is O(1) however many windows
// a dataset has, and any draw costs the same.
#pragma once

#include <cstdint>

namespace fsdp::data {

class WindowOrder {
 public:
  // REQUIRES: windows >= 1.
  WindowOrder(std::uint64_t seed, std::int64_t windows);

  std::int64_t windows() const { return windows_; }
  // The window of draw `draw` (>= 0): in epoch draw / windows(), position
  // draw % windows() of that epoch's permutation.
  std::int64_t window_of(std::int64_t draw) const;
  // Position `position` of epoch `epoch`'s permutation of [0, windows()).
  std::int64_t permuted(std::int64_t epoch, std::int64_t position) const;

 private:
  std::uint64_t seed_;
  std::int64_t windows_;
  int half_bits_;  // each Feistel half; the domain is 4^half_bits_ >= windows_
};

}  // namespace fsdp::data
