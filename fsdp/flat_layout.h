// The flat layout of one stage: where every parameter lives in the stage's flat
// index space, and which part of it each rank owns.
//
// This is the single piece of shard arithmetic in the runtime. The FSDP object,
// the inspector, checkpoint loading and `shard-inspect` all call it; nobody else
// computes an offset by hand.
//
// The rules (see docs/DESIGN.md, "Lay out"):
//   * Parameters are packed back to back in declaration order, with no gaps.
//     A parameter's flat range therefore does not depend on the world size.
//   * Only the stage total is padded, at the end, to a multiple of
//     world_size * alignment elements. Padding may cover several trailing ranks
//     entirely (a rank may own only padding).
//   * Rank r owns the flat range [r * shard_numel, (r + 1) * shard_numel).
//     A parameter may straddle any number of shards.
//   * Zero-element parameters keep their shape and own an empty flat range.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "fsdp/element_type.h"
#include "fsdp/initializer.h"

namespace fsdp {

// Shard boundaries fall on multiples of this many elements. 64 elements is
// 256 bytes of float32 and 128 bytes of bfloat16: every shard, and so every
// rank's slice of the buffer, starts on a 128-byte boundary in either dtype,
// which is what vectorised CPU loops and coalesced CUDA accesses want and what
// NCCL needs for its fastest path. The cost is at most world_size * 64 - 1
// padding elements per stage.
inline constexpr std::int64_t kDefaultShardAlignment = 64;

// A half-open range [begin, end) of element indices.
struct ElementRange {
  std::int64_t begin = 0;
  std::int64_t end = 0;

  std::int64_t size() const { return end - begin; }
  bool empty() const { return end <= begin; }
  friend bool operator==(const ElementRange& a, const ElementRange& b) {
    return a.begin == b.begin && a.end == b.end;
  }
};

// The overlap of two ranges; empty (with begin == end) when they do not meet.
ElementRange intersect(ElementRange a, ElementRange b);

// What a model declares about a parameter before any memory exists for it.
struct ParameterSpec {
  std::string name;
  std::vector<std::int64_t> shape;
  // The parameter's declared dtype (what a checkpoint stores). The stage's shards
  // and buffers have their own dtypes; offsets are in elements, not bytes.
  ElementType dtype = ElementType::kFloat32;
  // How initialize_weights() fills it (fsdp/initializer.h).
  ParameterInit init = ParameterInit::zeros();
};

// A parameter placed in the flat index space.
struct ParameterSlot {
  std::string name;
  std::vector<std::int64_t> shape;
  ElementType dtype = ElementType::kFloat32;
  ParameterInit init;
  std::int64_t numel = 0;
  ElementRange flat_range;  // in the stage's flat index space; independent of world size
};

// The part of one parameter that one rank owns.
struct OwnedSlice {
  std::size_t parameter_index = 0;
  int rank = 0;
  ElementRange parameter_range;  // element indices of the flattened parameter
  ElementRange shard_range;      // the same elements, as offsets in that rank's shard
};

class FlatLayout {
 public:
  // Lays `parameters` out for `world_size` ranks.
  // Throws std::invalid_argument, naming the parameter, on an empty or duplicate
  // name, a negative dimension or a total that overflows int64; and on
  // world_size < 1 or alignment < 1.
  FlatLayout(std::vector<ParameterSpec> parameters, int world_size,
             std::int64_t alignment = kDefaultShardAlignment);

  const std::vector<ParameterSlot>& parameters() const { return parameters_; }
  // Throws std::out_of_range naming `name` and listing a few known names.
  const ParameterSlot& parameter(std::string_view name) const;
  std::size_t parameter_index(std::string_view name) const;
  bool contains(std::string_view name) const;

  int world_size() const { return world_size_; }
  std::int64_t alignment() const { return alignment_; }
  // Sum of all parameters' element counts.
  std::int64_t unpadded_numel() const { return unpadded_numel_; }
  // unpadded_numel rounded up to a multiple of world_size * alignment.
  std::int64_t padded_numel() const { return padded_numel_; }
  // padded_numel / world_size: every rank's shard has this many elements.
  std::int64_t shard_numel() const { return shard_numel_; }

  // REQUIRES: 0 <= rank < world_size (throws std::out_of_range otherwise).
  // The flat range rank `rank` owns.
  ElementRange shard_range(int rank) const;
  // The part of rank's shard that is padding, as shard offsets (may be empty or the whole shard).
  ElementRange padding_in_shard(int rank) const;
  // Every parameter piece rank `rank` owns, in flat order.
  std::vector<OwnedSlice> owned_slices(int rank) const;
  // Every rank's piece of one parameter, in rank order (empty for a zero-element parameter).
  std::vector<OwnedSlice> placements(std::size_t parameter_index) const;

 private:
  void check_rank(int rank) const;

  std::vector<ParameterSlot> parameters_;
  std::unordered_map<std::string, std::size_t> index_by_name_;
  int world_size_ = 1;
  std::int64_t alignment_ = kDefaultShardAlignment;
  std::int64_t unpadded_numel_ = 0;
  std::int64_t padded_numel_ = 0;
  std::int64_t shard_numel_ = 0;
};

}  // namespace fsdp
