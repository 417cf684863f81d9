#include "fsdp/launch/inspect/statistics_table.h"

#include <algorithm>
#include <sstream>

#include "fsdp/checkpoint/checkpoint_series.h"
#include "fsdp/checkpoint/safetensors_format.h"
#include "fsdp/launch/inspect/json_number.h"
#include "fsdp/launch/inspect/text_table.h"

namespace fsdp::inspect {
namespace {

std::string plural(std::int64_t count, const char* singular, const char* plural_form) {
  return std::to_string(count) + " " + (count == 1 ? singular : plural_form);
}

std::vector<std::string> warnings_for(const ParameterStatistics& statistics) {
  std::vector<std::string> warnings;
  if (statistics.numel > 0 && statistics.nonzero_count == 0) warnings.push_back("all zeros");
  if (statistics.nan_count > 0) warnings.push_back(std::to_string(statistics.nan_count) + " NaN");
  if (statistics.inf_count > 0) warnings.push_back(std::to_string(statistics.inf_count) + " Inf");
  return warnings;
}

}  // namespace

ParameterStatistics tensor_statistics(TensorSource& source, std::size_t index,
                                      std::int64_t chunk_elements) {
  std::vector<PartialStatistics> parts;
  for_each_chunk(source, index, chunk_elements, [&](std::int64_t, const at::Tensor& values) {
    parts.push_back(partial_statistics(values));
  });
  return merge_statistics(parts);
}

StatisticsTable statistics_table(TensorSource& source, const NameFilter& filter,
                                 std::int64_t chunk_elements) {
  StatisticsTable table;
  table.kind = source.kind();
  table.path = source.path();
  table.tensors = source.tensors().size();
  table.array = std::string(checkpoint::shard_array_name(source.array()));
  if (auto* reader = source.distributed()) {
    table.world_size = reader->index().world_size;
    table.step = reader->index().step;
    table.groups = reader->index().stages.size();
  } else {
    table.groups = source.hf()->files().size();
  }
  for (std::size_t i = 0; i < source.tensors().size(); ++i) {
    const auto& tensor = source.tensors()[i];
    table.total_elements += tensor.numel;
    if (!filter.matches(tensor.name)) continue;
    TableRow row{tensor, tensor_statistics(source, i, chunk_elements), {}};
    row.warnings = warnings_for(row.statistics);
    table.rows.push_back(std::move(row));
  }
  return table;
}

std::string table_text(const StatisticsTable& table) {
  std::ostringstream out;
  const bool distributed = table.kind == SourceKind::kDistributedCheckpoint;
  if (distributed) {
    out << "distributed checkpoint " << table.path << ": world size " << table.world_size
        << ", step " << table.step << ", " << plural(table.groups, "stage", "stages") << ", "
        << plural(table.tensors, "parameter", "parameters") << ", "
        << plural(table.total_elements, "element", "elements");
    if (table.array != "weight_shard") out << " (showing " << table.array << ")";
    if (checkpoint::is_checkpoint_series(table.path)) {
      // A run's series: name every step it holds and which one is shown.
      std::string steps;
      for (const auto step : checkpoint::series_steps(table.path)) {
        steps += (steps.empty() ? "" : ", ") + std::to_string(step);
      }
      out << "\nseries of checkpoints: steps " << steps << "; showing the latest, "
          << checkpoint::latest_checkpoint(table.path).filename().string();
    }
  } else {
    out << "HF checkpoint " << table.path << ": " << plural(table.groups, "file", "files") << ", "
        << plural(table.tensors, "tensor", "tensors") << ", "
        << plural(table.total_elements, "element", "elements");
  }
  if (table.rows.size() != table.tensors) out << "; " << table.rows.size() << " shown";
  out << "\n";

  std::vector<std::vector<std::string>> cells = {
      {"name", "shape", "dtype", distributed ? "stage" : "file", "mean", "std", "min", "max",
       "abs_max", "nonzero", "nan", "inf"}};
  for (const auto& row : table.rows) {
    const auto& s = row.statistics;
    cells.push_back({row.tensor.name, checkpoint::format_shape(row.tensor.shape), row.tensor.dtype,
                     row.tensor.group, format_number(s.mean), format_number(s.std),
                     format_number(s.min), format_number(s.max), format_number(s.abs_max),
                     std::to_string(s.nonzero_count), std::to_string(s.nan_count),
                     std::to_string(s.inf_count)});
  }
  // Names, shapes, dtypes and groups left-aligned; numbers right-aligned.
  out << render_text_table(cells, [](std::size_t c) { return c < 4; });
  for (const auto& row : table.rows) {
    for (const auto& warning : row.warnings) {
      out << "WARNING: " << row.tensor.name << " " << checkpoint::format_shape(row.tensor.shape)
          << ": " << warning;
      if (warning == "all zeros") out << " (" << row.statistics.numel << " elements)";
      out << "\n";
    }
  }
  return out.str();
}

nlohmann::json table_json(const StatisticsTable& table) {
  const bool distributed = table.kind == SourceKind::kDistributedCheckpoint;
  nlohmann::json document = {{"kind", distributed ? "distributed" : "hf"},
                             {"path", table.path},
                             {"tensor_count", table.tensors},
                             {"total_elements", table.total_elements}};
  if (distributed) {
    document["world_size"] = table.world_size;
    document["step"] = table.step;
    document["stages"] = table.groups;
    document["array"] = table.array;
  } else {
    document["files"] = table.groups;
  }
  auto rows = nlohmann::json::array();
  for (const auto& row : table.rows) {
    const auto& s = row.statistics;
    rows.push_back({{"name", row.tensor.name},
                    {"shape", row.tensor.shape},
                    {"dtype", row.tensor.dtype},
                    {"declared_dtype", row.tensor.declared_dtype},
                    {distributed ? "stage" : "file", row.tensor.group},
                    {"numel", s.numel},
                    {"mean", json_number(s.mean)},
                    {"std", json_number(s.std)},
                    {"min", json_number(s.min)},
                    {"max", json_number(s.max)},
                    {"abs_max", json_number(s.abs_max)},
                    {"nonzero", s.nonzero_count},
                    {"nan", s.nan_count},
                    {"inf", s.inf_count},
                    {"warnings", row.warnings}});
  }
  document["parameters"] = rows;
  return document;
}

}  // namespace fsdp::inspect
