#include "fsdp/checkpoint/checkpoint_reader.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <numeric>
#include <stdexcept>
#include <tuple>

#include "fsdp/checkpoint/checkpoint_error.h"
#include "fsdp/checkpoint/element_conversion.h"
#include "fsdp/torch_interop.h"

namespace fsdp::checkpoint {
namespace {

std::string range_text(ElementRange range) {
  return "[" + std::to_string(range.begin) + ", " + std::to_string(range.end) + ")";
}

std::optional<ElementType> element_type_named(const std::string& name) {
  for (auto type :
       {ElementType::kFloat32, ElementType::kFloat64, ElementType::kBFloat16, ElementType::kFloat16,
        ElementType::kInt8, ElementType::kUInt8, ElementType::kInt32, ElementType::kInt64}) {
    if (element_type_name(type) == name) return type;
  }
  return std::nullopt;
}

std::size_t edit_distance(std::string_view a, std::string_view b) {
  std::vector<std::size_t> row(b.size() + 1);
  std::iota(row.begin(), row.end(), std::size_t{0});
  for (std::size_t i = 1; i <= a.size(); ++i) {
    std::size_t diagonal = row[0];
    row[0] = i;
    for (std::size_t j = 1; j <= b.size(); ++j) {
      const std::size_t above = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diagonal + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diagonal = above;
    }
  }
  return row[b.size()];
}

}  // namespace

std::vector<std::string> close_names(std::string_view name,
                                     const std::vector<std::string>& candidates,
                                     std::size_t count) {
  // (does not contain `name`, distance, candidate): a typo'd name ranks its
  // near misses first, a fragment ("qkv") the names that contain it.
  std::vector<std::tuple<bool, std::size_t, const std::string*>> ranked;
  for (const auto& candidate : candidates) {
    ranked.emplace_back(candidate.find(name) == std::string::npos, edit_distance(name, candidate),
                        &candidate);
  }
  const std::size_t kept = std::min(count, ranked.size());
  std::partial_sort(ranked.begin(), ranked.begin() + static_cast<std::ptrdiff_t>(kept),
                    ranked.end(), [](const auto& a, const auto& b) {
                      return std::tie(std::get<0>(a), std::get<1>(a), *std::get<2>(a)) <
                             std::tie(std::get<0>(b), std::get<1>(b), *std::get<2>(b));
                    });
  std::vector<std::string> names;
  for (std::size_t i = 0; i < kept; ++i) names.push_back(*std::get<2>(ranked[i]));
  return names;
}

CheckpointReader::CheckpointReader(const std::filesystem::path& directory, std::int64_t chunk_bytes)
    : index_(read_checkpoint_index(directory)), chunk_bytes_(chunk_bytes) {
  const std::string context = source();
  for (const auto& record : index_.stages) {
    const std::string where = context + ": stage \"" + record.name + "\"";
    if (!element_type_named(record.shard_dtype)) {
      throw CheckpointError(where + ": unknown shard dtype \"" + record.shard_dtype + "\"");
    }
    // The index stores the shard size, not the alignment that produced it.
    // Any alignment giving the same shard size gives the same placements, and
    // the shard size itself is one (read_checkpoint_index checked that
    // world_size shards hold the stage).
    try {
      layouts_.push_back(std::make_unique<FlatLayout>(
          record.parameters, index_.world_size, std::max<std::int64_t>(1, record.shard_numel)));
    } catch (const std::exception& error) {
      throw CheckpointError(where + ": " + error.what());
    }
    const auto& layout = *layouts_.back();
    if (layout.unpadded_numel() != record.unpadded_numel ||
        layout.shard_numel() != record.shard_numel) {
      throw CheckpointError(where + ": its parameters hold " +
                            std::to_string(layout.unpadded_numel()) + " elements in shards of " +
                            std::to_string(layout.shard_numel()) + ", but the index says " +
                            std::to_string(record.unpadded_numel) + " in shards of " +
                            std::to_string(record.shard_numel));
    }
    for (std::size_t p = 0; p < record.parameters.size(); ++p) {
      if (!(layout.parameters()[p].flat_range == record.flat_ranges[p])) {
        throw CheckpointError(where + ": parameter \"" + record.parameters[p].name +
                              "\" has flat_range " + range_text(record.flat_ranges[p]) +
                              ", but its place in the stage is " +
                              range_text(layout.parameters()[p].flat_range));
      }
    }
  }
  readers_.resize(static_cast<std::size_t>(index_.world_size));
}

CheckpointReader::~CheckpointReader() = default;

std::string CheckpointReader::source() const {
  return (index_.directory / kCheckpointIndexFileName).string();
}

std::vector<ParameterLocation> CheckpointReader::parameters() const {
  std::vector<ParameterLocation> locations;
  for (std::size_t s = 0; s < index_.stages.size(); ++s) {
    for (std::size_t p = 0; p < index_.stages[s].parameters.size(); ++p)
      locations.push_back({s, p});
  }
  return locations;
}

std::optional<ParameterLocation> CheckpointReader::lookup(std::string_view name) const {
  for (std::size_t s = 0; s < layouts_.size(); ++s) {
    if (layouts_[s]->contains(name))
      return ParameterLocation{s, layouts_[s]->parameter_index(name)};
  }
  return std::nullopt;
}

ParameterLocation CheckpointReader::find(std::string_view name) const {
  if (auto location = lookup(name)) return *location;
  std::vector<std::string> names;
  for (const auto& record : index_.stages) {
    for (const auto& spec : record.parameters) names.push_back(spec.name);
  }
  std::string close;
  for (const auto& candidate : close_names(name, names)) {
    close += (close.empty() ? "" : ", ") + candidate;
  }
  throw CheckpointError(source() + ": no parameter named '" + std::string(name) + "' (" +
                        std::to_string(names.size()) + " parameters" +
                        (close.empty() ? "" : "; close names: " + close) + ")");
}

const StageRecord& CheckpointReader::stage(const ParameterLocation& location) const {
  return index_.stages.at(location.stage);
}

const ParameterSpec& CheckpointReader::parameter(const ParameterLocation& location) const {
  return stage(location).parameters.at(location.parameter);
}

std::int64_t CheckpointReader::numel(const ParameterLocation& location) const {
  return stage(location).flat_ranges.at(location.parameter).size();
}

ElementType CheckpointReader::shard_type(std::size_t stage) const {
  // Checked in the constructor.
  return *element_type_named(index_.stages.at(stage).shard_dtype);
}

bool CheckpointReader::has(ShardArray array) const {
  switch (array) {
    case ShardArray::kWeights:
      return true;
    case ShardArray::kGradients:
      return index_.has_gradients;
    case ShardArray::kExpAvg:
    case ShardArray::kExpAvgSq:
      return index_.has_optimizer;
  }
  return false;
}

VerifiedReader& CheckpointReader::reader(int rank) {
  auto& reader = readers_.at(static_cast<std::size_t>(rank));
  if (!reader) {
    const auto& record = index_.files.at(static_cast<std::size_t>(rank));
    reader = std::make_unique<VerifiedReader>(index_.directory / record.name, record, chunk_bytes_);
  }
  if (rank != staging_rank_) {
    if (staging_rank_ >= 0) readers_[static_cast<std::size_t>(staging_rank_)]->release_staging();
    staging_rank_ = rank;
  }
  return *reader;
}

const TensorEntry& CheckpointReader::shard_entry(int rank, std::size_t stage, ShardArray array) {
  const auto& record = index_.stages.at(stage);
  const auto& file = reader(rank).file();
  const std::string name = shard_tensor_name(record.name, array);
  const auto& entry = file.tensor(name);
  const auto expected_dtype = safetensors_dtype_of(scalar_type_of(shard_type(stage)));
  if (entry.shape != std::vector<std::int64_t>{record.shard_numel} ||
      entry.dtype != expected_dtype) {
    throw CheckpointError(file.path() + ": tensor \"" + name + "\" is " +
                          std::string(dtype_name(entry.dtype)) + " " + format_shape(entry.shape) +
                          ", expected " + std::string(dtype_name(expected_dtype)) + " [" +
                          std::to_string(record.shard_numel) + "] (index.json)");
  }
  return entry;
}

at::Tensor CheckpointReader::read(const ParameterLocation& location, ElementRange elements,
                                  ShardArray array) {
  const auto& record = stage(location);
  const auto& spec = parameter(location);
  const auto flat = record.flat_ranges.at(location.parameter);
  if (elements.begin < 0 || elements.end < elements.begin || elements.end > flat.size()) {
    throw CheckpointError(source() + ": elements " + range_text(elements) + " of parameter \"" +
                          spec.name + "\", which has " + std::to_string(flat.size()));
  }
  if (!has(array)) {
    throw CheckpointError(source() + ": the checkpoint has no " +
                          std::string(shard_array_name(array)) + " arrays");
  }
  const auto type = scalar_type_of(shard_type(location.stage));
  auto values = at::empty({elements.size()}, at::TensorOptions().dtype(type));
  const std::int64_t element_bytes = static_cast<std::int64_t>(values.element_size());
  const ElementRange wanted{flat.begin + elements.begin, flat.begin + elements.end};
  const auto& layout = *layouts_.at(location.stage);
  for (int rank = 0; rank < index_.world_size && !wanted.empty(); ++rank) {
    const auto shard = layout.shard_range(rank);
    const auto overlap = intersect(wanted, shard);
    if (overlap.empty()) continue;
    const auto& entry = shard_entry(rank, location.stage, array);
    auto& file = reader(rank);
    const std::int64_t file_offset = file.file().header().data_offset() + entry.begin +
                                     (overlap.begin - shard.begin) * element_bytes;
    file.read(
        file_offset,
        static_cast<char*>(values.data_ptr()) + (overlap.begin - wanted.begin) * element_bytes,
        overlap.size() * element_bytes);
  }
  return values;
}

ParameterPlacements CheckpointReader::placements(const ParameterLocation& location) {
  const auto& record = stage(location);
  const auto& layout = *layouts_.at(location.stage);
  ParameterPlacements result;
  result.parameter = parameter(location).name;
  result.stage = record.name;
  result.flat_range = record.flat_ranges.at(location.parameter);
  result.shard_numel = record.shard_numel;
  result.stage_unpadded_numel = record.unpadded_numel;
  const std::int64_t element_bytes = element_size(shard_type(location.stage));
  // Absolute file bytes of shard offsets [begin, end) in rank `rank`'s file.
  const auto file_bytes = [&](int rank, ElementRange shard_offsets) {
    const auto& entry = shard_entry(rank, location.stage, ShardArray::kWeights);
    const std::int64_t base = reader(rank).file().header().data_offset() + entry.begin;
    return std::pair{base + shard_offsets.begin * element_bytes,
                     base + shard_offsets.end * element_bytes};
  };
  for (const auto& slice : layout.placements(location.parameter)) {
    RankPlacement piece;
    piece.rank = slice.rank;
    piece.file = index_.files.at(static_cast<std::size_t>(slice.rank)).name;
    piece.parameter_range = slice.parameter_range;
    piece.shard_range = slice.shard_range;
    std::tie(piece.file_begin, piece.file_end) = file_bytes(slice.rank, slice.shard_range);
    result.pieces.push_back(std::move(piece));
  }
  for (int rank = 0; rank < index_.world_size; ++rank) {
    const auto padding = layout.padding_in_shard(rank);
    if (padding.empty()) continue;
    RankPadding entry{rank, padding, 0, 0};
    std::tie(entry.file_begin, entry.file_end) = file_bytes(rank, padding);
    result.padding.push_back(entry);
  }
  return result;
}

}  // namespace fsdp::checkpoint
