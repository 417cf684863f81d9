#include "fsdp/flat_layout.h"

#include <algorithm>
#include <stdexcept>

namespace fsdp {
namespace {

std::string shape_string(const std::vector<std::int64_t>& shape) {
  std::string text = "[";
  for (std::size_t i = 0; i < shape.size(); ++i) {
    text += (i ? ", " : "") + std::to_string(shape[i]);
  }
  return text + "]";
}

std::int64_t checked_numel(const ParameterSpec& spec) {
  std::int64_t numel = 1;
  for (std::int64_t dim : spec.shape) {
    if (dim < 0) {
      throw std::invalid_argument("flat layout: parameter '" + spec.name + "' has shape " +
                                  shape_string(spec.shape) + " with a negative dimension");
    }
    if (__builtin_mul_overflow(numel, dim, &numel)) {
      throw std::invalid_argument("flat layout: parameter '" + spec.name + "' with shape " +
                                  shape_string(spec.shape) + " has more elements than int64 holds");
    }
  }
  return numel;
}

}  // namespace

ElementRange intersect(ElementRange a, ElementRange b) {
  const std::int64_t begin = std::max(a.begin, b.begin);
  const std::int64_t end = std::min(a.end, b.end);
  return end > begin ? ElementRange{begin, end} : ElementRange{begin, begin};
}

FlatLayout::FlatLayout(std::vector<ParameterSpec> parameters, int world_size,
                       std::int64_t alignment)
    : world_size_(world_size), alignment_(alignment) {
  if (world_size < 1) {
    throw std::invalid_argument("flat layout: world size must be at least 1, got " +
                                std::to_string(world_size));
  }
  if (alignment < 1) {
    throw std::invalid_argument("flat layout: alignment must be at least 1 element, got " +
                                std::to_string(alignment));
  }
  parameters_.reserve(parameters.size());
  std::int64_t offset = 0;
  for (ParameterSpec& spec : parameters) {
    if (spec.name.empty()) {
      throw std::invalid_argument("flat layout: parameter #" + std::to_string(parameters_.size()) +
                                  " has an empty name");
    }
    const std::int64_t numel = checked_numel(spec);
    std::int64_t end = 0;
    if (__builtin_add_overflow(offset, numel, &end)) {
      throw std::invalid_argument(
          "flat layout: the stage's total element count overflows int64 at '" + spec.name + "'");
    }
    if (!index_by_name_.emplace(spec.name, parameters_.size()).second) {
      throw std::invalid_argument("flat layout: parameter '" + spec.name +
                                  "' is declared twice in the same stage");
    }
    parameters_.push_back(ParameterSlot{
        std::move(spec.name), std::move(spec.shape), spec.dtype, spec.init, numel, {offset, end}});
    offset = end;
  }
  unpadded_numel_ = offset;
  std::int64_t unit = 0;
  if (__builtin_mul_overflow(static_cast<std::int64_t>(world_size), alignment, &unit) ||
      unpadded_numel_ > INT64_MAX - (unit - 1)) {
    throw std::invalid_argument(
        "flat layout: padding " + std::to_string(unpadded_numel_) +
        " elements to a multiple of world size x alignment overflows int64");
  }
  padded_numel_ = (unpadded_numel_ + unit - 1) / unit * unit;
  shard_numel_ = padded_numel_ / world_size;
}

const ParameterSlot& FlatLayout::parameter(std::string_view name) const {
  return parameters_[parameter_index(name)];
}

std::size_t FlatLayout::parameter_index(std::string_view name) const {
  auto found = index_by_name_.find(std::string(name));
  if (found == index_by_name_.end()) {
    std::string known;
    for (std::size_t i = 0; i < parameters_.size() && i < 5; ++i) {
      known += (i ? ", '" : "'") + parameters_[i].name + "'";
    }
    if (parameters_.size() > 5) known += ", ...";
    throw std::out_of_range("flat layout: no parameter named '" + std::string(name) +
                            "' in this stage (it has " + std::to_string(parameters_.size()) +
                            " parameters: " + (known.empty() ? "none" : known) + ")");
  }
  return found->second;
}

bool FlatLayout::contains(std::string_view name) const {
  return index_by_name_.count(std::string(name)) != 0;
}

void FlatLayout::check_rank(int rank) const {
  if (rank < 0 || rank >= world_size_) {
    throw std::out_of_range("flat layout: rank " + std::to_string(rank) +
                            " is outside the world of size " + std::to_string(world_size_));
  }
}

ElementRange FlatLayout::shard_range(int rank) const {
  check_rank(rank);
  return {rank * shard_numel_, (rank + 1) * shard_numel_};
}

ElementRange FlatLayout::padding_in_shard(int rank) const {
  const ElementRange shard = shard_range(rank);
  const ElementRange padding = intersect(shard, {unpadded_numel_, padded_numel_});
  if (padding.empty()) return {shard_numel_, shard_numel_};
  return {padding.begin - shard.begin, padding.end - shard.begin};
}

std::vector<OwnedSlice> FlatLayout::owned_slices(int rank) const {
  const ElementRange shard = shard_range(rank);
  std::vector<OwnedSlice> slices;
  // The first parameter that ends after the shard begins; parameters are sorted
  // by flat offset, so binary search finds it.
  auto first = std::upper_bound(
      parameters_.begin(), parameters_.end(), shard.begin,
      [](std::int64_t offset, const ParameterSlot& slot) { return offset < slot.flat_range.end; });
  for (auto it = first; it != parameters_.end() && it->flat_range.begin < shard.end; ++it) {
    const ElementRange overlap = intersect(it->flat_range, shard);
    if (overlap.empty()) continue;  // zero-element parameters own nothing
    slices.push_back(
        OwnedSlice{static_cast<std::size_t>(it - parameters_.begin()),
                   rank,
                   {overlap.begin - it->flat_range.begin, overlap.end - it->flat_range.begin},
                   {overlap.begin - shard.begin, overlap.end - shard.begin}});
  }
  return slices;
}

std::vector<OwnedSlice> FlatLayout::placements(std::size_t parameter_index) const {
  if (parameter_index >= parameters_.size()) {
    throw std::out_of_range("flat layout: parameter index " + std::to_string(parameter_index) +
                            " is outside a stage of " + std::to_string(parameters_.size()) +
                            " parameters");
  }
  const ParameterSlot& slot = parameters_[parameter_index];
  std::vector<OwnedSlice> slices;
  if (slot.numel == 0) return slices;
  const int first_rank = static_cast<int>(slot.flat_range.begin / shard_numel_);
  const int last_rank = static_cast<int>((slot.flat_range.end - 1) / shard_numel_);
  for (int rank = first_rank; rank <= last_rank; ++rank) {
    const ElementRange shard = shard_range(rank);
    const ElementRange overlap = intersect(slot.flat_range, shard);
    slices.push_back(
        OwnedSlice{parameter_index,
                   rank,
                   {overlap.begin - slot.flat_range.begin, overlap.end - slot.flat_range.begin},
                   {overlap.begin - shard.begin, overlap.end - shard.begin}});
  }
  return slices;
}

}  // namespace fsdp
