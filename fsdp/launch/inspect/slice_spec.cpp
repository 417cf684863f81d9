#include "fsdp/launch/inspect/slice_spec.h"

#include <algorithm>
#include <charconv>

#include "fsdp/launch/inspect/usage_error.h"

namespace fsdp::inspect {
namespace {

std::string trimmed(std::string_view text) {
  const auto first = text.find_first_not_of(" \t");
  if (first == std::string_view::npos) return "";
  const auto last = text.find_last_not_of(" \t");
  return std::string(text.substr(first, last - first + 1));
}

std::optional<std::int64_t> parse_bound(const std::string& text, std::string_view item) {
  if (text.empty()) return std::nullopt;
  std::int64_t value = 0;
  const auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (error != std::errc() || end != text.data() + text.size()) {
    throw UsageError("--slice: '" + std::string(item) + "' is not an index or a range" +
                     " (expected e.g. 5, -1, 1:3, :4, ::2)");
  }
  return value;
}

}  // namespace

SliceSpec parse_slice(std::string_view text) {
  SliceSpec spec;
  if (trimmed(text).empty()) return spec;
  std::size_t begin = 0;
  while (true) {
    const auto comma = text.find(',', begin);
    const auto item_view =
        text.substr(begin, comma == std::string_view::npos ? text.npos : comma - begin);
    const std::string item = trimmed(item_view);
    DimensionSlice dimension;
    std::vector<std::string> parts;
    std::size_t part_begin = 0;
    while (true) {
      const auto colon = item.find(':', part_begin);
      parts.push_back(trimmed(std::string_view(item).substr(
          part_begin, colon == std::string::npos ? std::string::npos : colon - part_begin)));
      if (colon == std::string::npos) break;
      part_begin = colon + 1;
    }
    if (parts.size() == 1) {
      const auto index = parse_bound(parts[0], item);
      if (!index) throw UsageError("--slice: an empty item (use ':' for a whole dimension)");
      dimension.is_index = true;
      dimension.index = *index;
    } else if (parts.size() <= 3) {
      dimension.start = parse_bound(parts[0], item);
      dimension.stop = parse_bound(parts[1], item);
      if (parts.size() == 3) {
        if (const auto step = parse_bound(parts[2], item)) dimension.step = *step;
      }
      if (dimension.step <= 0) {
        throw UsageError("--slice: '" + item + "': the step must be positive");
      }
    } else {
      throw UsageError("--slice: '" + item + "' has more than two ':'");
    }
    spec.dimensions.push_back(dimension);
    if (comma == std::string_view::npos) break;
    begin = comma + 1;
  }
  return spec;
}

std::vector<std::int64_t> Selection::shape() const {
  std::vector<std::int64_t> shape;
  for (std::size_t d = 0; d < indices.size(); ++d) {
    if (kept[d]) shape.push_back(static_cast<std::int64_t>(indices[d].size()));
  }
  return shape;
}

std::int64_t Selection::numel() const {
  std::int64_t numel = 1;
  for (const auto& list : indices) numel *= static_cast<std::int64_t>(list.size());
  return numel;
}

Selection resolve_slice(const SliceSpec& spec, const std::vector<std::int64_t>& shape) {
  if (spec.dimensions.size() > shape.size()) {
    throw UsageError("--slice names " + std::to_string(spec.dimensions.size()) +
                     " dimensions, but the tensor has " + std::to_string(shape.size()));
  }
  Selection selection;
  for (std::size_t d = 0; d < shape.size(); ++d) {
    const std::int64_t size = shape[d];
    std::vector<std::int64_t> list;
    bool kept = true;
    const DimensionSlice whole;
    const DimensionSlice& slice = d < spec.dimensions.size() ? spec.dimensions[d] : whole;
    if (slice.is_index) {
      const std::int64_t index = slice.index < 0 ? slice.index + size : slice.index;
      if (index < 0 || index >= size) {
        throw UsageError("--slice: index " + std::to_string(slice.index) +
                         " is out of range for dimension " + std::to_string(d) + " of size " +
                         std::to_string(size));
      }
      list.push_back(index);
      kept = false;
    } else {
      // Python's clipping: a negative bound counts from the end, then clamps to [0, size].
      const auto bound = [size](std::optional<std::int64_t> value, std::int64_t otherwise) {
        if (!value) return otherwise;
        const std::int64_t resolved = *value < 0 ? *value + size : *value;
        return std::min(std::max<std::int64_t>(resolved, 0), size);
      };
      const std::int64_t start = bound(slice.start, 0), stop = bound(slice.stop, size);
      for (std::int64_t i = start; i < stop; i += slice.step) {
        list.push_back(i);
        if (slice.step >= stop - i)
          break;  // the next index is past stop (and i + step may overflow)
      }
    }
    selection.indices.push_back(std::move(list));
    selection.kept.push_back(kept);
  }
  return selection;
}

}  // namespace fsdp::inspect
