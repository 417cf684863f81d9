#include "fsdp/inspector.h"

#include <ATen/ATen.h>

#include <cmath>
#include <limits>
#include <sstream>

#include "fsdp/torch_interop.h"

namespace fsdp {
namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

// PartialStatistics travels between ranks as a row of float64; int64 counts are
// exact in float64 up to 2^53 elements, far beyond any one parameter.
constexpr int kPartialFields = 11;

std::vector<double> to_row(const PartialStatistics& part) {
  return {static_cast<double>(part.numel),
          static_cast<double>(part.nan_count),
          static_cast<double>(part.inf_count),
          static_cast<double>(part.nonzero_count),
          static_cast<double>(part.value_count),
          part.sum,
          part.mean,
          part.squared_deviations,
          part.min,
          part.max,
          part.abs_max};
}

PartialStatistics from_row(const double* row) {
  PartialStatistics part;
  part.numel = static_cast<std::int64_t>(row[0]);
  part.nan_count = static_cast<std::int64_t>(row[1]);
  part.inf_count = static_cast<std::int64_t>(row[2]);
  part.nonzero_count = static_cast<std::int64_t>(row[3]);
  part.value_count = static_cast<std::int64_t>(row[4]);
  part.sum = row[5];
  part.mean = row[6];
  part.squared_deviations = row[7];
  part.min = row[8];
  part.max = row[9];
  part.abs_max = row[10];
  return part;
}

}  // namespace

PartialStatistics partial_statistics(const at::Tensor& values) {
  PartialStatistics part;
  const at::Tensor flat = values.detach().reshape({-1}).to(at::kDouble);
  part.numel = flat.numel();
  if (part.numel == 0) return part;
  const at::Tensor is_nan = at::isnan(flat);
  part.nan_count = is_nan.sum().item<std::int64_t>();
  part.inf_count = at::isinf(flat).sum().item<std::int64_t>();
  part.nonzero_count = flat.ne(0).sum().item<std::int64_t>();
  const at::Tensor valid = part.nan_count ? flat.masked_select(is_nan.logical_not()) : flat;
  part.value_count = valid.numel();
  if (part.value_count == 0) return part;
  part.sum = valid.sum().item<double>();
  part.mean = part.sum / static_cast<double>(part.value_count);
  part.squared_deviations = valid.sub(part.mean).square().sum().item<double>();
  part.min = valid.min().item<double>();
  part.max = valid.max().item<double>();
  part.abs_max = valid.abs().max().item<double>();
  return part;
}

ParameterStatistics merge_statistics(const std::vector<PartialStatistics>& parts) {
  ParameterStatistics result;
  std::int64_t count = 0;
  double mean = 0;
  double squared_deviations = 0;
  double min = kNaN;
  double max = kNaN;
  double abs_max = kNaN;
  for (const PartialStatistics& part : parts) {
    result.numel += part.numel;
    result.nan_count += part.nan_count;
    result.inf_count += part.inf_count;
    result.nonzero_count += part.nonzero_count;
    result.sum += part.sum;
    if (part.value_count == 0) continue;
    // Chan et al.: merge (count, mean, M2) of two disjoint sets.
    const std::int64_t merged = count + part.value_count;
    const double delta = part.mean - mean;
    mean += delta * static_cast<double>(part.value_count) / static_cast<double>(merged);
    squared_deviations += part.squared_deviations + delta * delta * static_cast<double>(count) *
                                                        static_cast<double>(part.value_count) /
                                                        static_cast<double>(merged);
    count = merged;
    min = std::isnan(min) ? part.min : std::min(min, part.min);
    max = std::isnan(max) ? part.max : std::max(max, part.max);
    abs_max = std::isnan(abs_max) ? part.abs_max : std::max(abs_max, part.abs_max);
  }
  result.mean = count > 0 ? result.sum / static_cast<double>(count) : kNaN;
  result.std = count > 1 ? std::sqrt(squared_deviations / static_cast<double>(count - 1)) : 0.0;
  result.min = min;
  result.max = max;
  result.abs_max = abs_max;
  return result;
}

at::Tensor owned_weight_part(const Fsdp& fsdp, std::string_view name) {
  const FlatLayout& layout = fsdp.layout();
  const ParameterSlot& slot = layout.parameter(name);
  const ElementRange shard = layout.shard_range(fsdp.group().rank());
  const ElementRange owned = intersect(slot.flat_range, shard);
  if (owned.empty()) return fsdp.weight_shard().narrow(0, 0, 0);
  return fsdp.weight_shard().narrow(0, owned.begin - shard.begin, owned.size());
}

at::Tensor read_parameter(const Fsdp& fsdp, std::string_view name) {
  const FlatLayout& layout = fsdp.layout();
  const std::size_t index = layout.parameter_index(name);
  const ParameterSlot& slot = layout.parameters()[index];
  at::Tensor flat = at::empty({slot.numel}, fsdp.weight_shard().options());
  for (const OwnedSlice& piece : layout.placements(index)) {
    at::Tensor destination =
        flat.narrow(0, piece.parameter_range.begin, piece.parameter_range.size());
    if (piece.rank == fsdp.group().rank()) {
      destination.copy_(
          fsdp.weight_shard().narrow(0, piece.shard_range.begin, piece.shard_range.size()));
    }
    fsdp.group().broadcast(span_of(destination), piece.rank);
  }
  return flat.view(slot.shape).cpu();
}

ParameterStatistics parameter_statistics(const Fsdp& fsdp, std::string_view name) {
  const ProcessGroup& group = fsdp.group();
  const std::vector<double> own_row = to_row(partial_statistics(owned_weight_part(fsdp, name)));
  at::Tensor rows =
      at::zeros({group.size() * kPartialFields}, fsdp.weight_shard().options().dtype(at::kDouble));
  rows.narrow(0, group.rank() * kPartialFields, kPartialFields)
      .copy_(at::tensor(own_row, at::kDouble));
  fsdp.group().all_gather_in_place(span_of(rows));
  const at::Tensor host_rows = rows.cpu();
  const double* data = host_rows.data_ptr<double>();
  std::vector<PartialStatistics> parts;
  for (int rank = 0; rank < group.size(); ++rank) {
    parts.push_back(from_row(data + rank * kPartialFields));
  }
  return merge_statistics(parts);
}

std::vector<OwnedSlice> parameter_placements(const FlatLayout& layout, std::string_view name) {
  return layout.placements(layout.parameter_index(name));
}

std::string describe_placements(const FlatLayout& layout, std::string_view name) {
  const ParameterSlot& slot = layout.parameter(name);
  std::ostringstream text;
  text << "'" << slot.name << "': " << slot.numel << " elements at flat [" << slot.flat_range.begin
       << ", " << slot.flat_range.end << ") of " << layout.unpadded_numel() << " (+"
       << layout.padded_numel() - layout.unpadded_numel() << " padding), shard size "
       << layout.shard_numel() << " x " << layout.world_size() << " ranks\n";
  for (const OwnedSlice& piece : parameter_placements(layout, name)) {
    text << "  rank " << piece.rank << ": elements [" << piece.parameter_range.begin << ", "
         << piece.parameter_range.end << ") at shard offsets [" << piece.shard_range.begin << ", "
         << piece.shard_range.end << ")\n";
  }
  for (int rank = 0; rank < layout.world_size(); ++rank) {
    const ElementRange padding = layout.padding_in_shard(rank);
    if (!padding.empty()) {
      text << "  rank " << rank << " padding: shard offsets [" << padding.begin << ", "
           << padding.end << ")\n";
    }
  }
  return text.str();
}

}  // namespace fsdp
