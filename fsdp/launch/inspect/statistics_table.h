// The default view: one row of statistics per parameter (or HF key), read
// chunk by chunk so that memory stays bounded whatever a parameter's size,
// with warnings for parameters that are all zeros or hold NaN or infinities.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>
#include <vector>

#include "fsdp/inspector.h"
#include "fsdp/launch/inspect/name_filter.h"
#include "fsdp/launch/inspect/tensor_source.h"

namespace fsdp::inspect {

inline constexpr std::int64_t kDefaultChunkElements = std::int64_t{1} << 22;

struct TableRow {
  TensorInfo tensor;
  ParameterStatistics statistics;
  std::vector<std::string> warnings;  // "all zeros", "3 NaN", "1 Inf"
};

struct StatisticsTable {
  SourceKind kind = SourceKind::kDistributedCheckpoint;
  std::string path;
  std::string array;                // "weight_shard", ... (distributed checkpoints)
  int world_size = 0;               // distributed checkpoints
  std::int64_t step = 0;            // distributed checkpoints
  std::size_t groups = 0;           // stages, or HF files
  std::size_t tensors = 0;          // in the source, filtered or not
  std::int64_t total_elements = 0;  // in the source, filtered or not
  std::vector<TableRow> rows;       // the tensors the filter lets through, in source order
};

// Statistics of every element of tensor `index` (fsdp/inspector.h: NaN left
// out of everything but nan_count), read `chunk_elements` at a time and merged.
ParameterStatistics tensor_statistics(TensorSource& source, std::size_t index,
                                      std::int64_t chunk_elements = kDefaultChunkElements);

StatisticsTable statistics_table(TensorSource& source, const NameFilter& filter,
                                 std::int64_t chunk_elements = kDefaultChunkElements);

// A header line, one aligned row per tensor, then one "WARNING: ..." line per warning.
std::string table_text(const StatisticsTable& table);
// {"kind" ("distributed" or "hf"), "path", "tensor_count", "total_elements",
//  "world_size", "step", "stages", "array" (distributed) or "files" (HF),
//  "parameters": [{"name", "shape", "dtype", "declared_dtype", "stage" (or "file"),
//  "numel", "mean", "std", "min", "max", "abs_max", "nonzero", "nan", "inf", "warnings"}]};
// non-finite numbers as json_number.h writes them.
nlohmann::json table_json(const StatisticsTable& table);

}  // namespace fsdp::inspect
