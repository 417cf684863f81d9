// --diff OTHER: two checkpoints compared parameter by parameter.
//
//   distributed vs distributed  by parameter name (world sizes and stage splits may differ)
//   HF vs HF                    by key
//   distributed vs HF           each runtime parameter assembled from the HF
//                               tensors through the conversion rules of the model
//                               in the distributed checkpoint's training config
//                               (training_config["model"], written by fsdp-train)
//
// Per parameter: the largest absolute difference |a - b|, the largest
// relative difference |a - b| / max(|a|, |b|) (0 where a == b), and how many
// elements differ by more than the tolerance. Values are compared in float64,
// which holds every stored floating value exactly. A NaN meets a NaN as
// equal; a NaN or an infinity meeting anything else is an infinite
// difference. A parameter differs when its largest absolute difference is
// above the tolerance (0: bitwise-equal values), when it is on one side only,
// or when the shapes differ.
//
// Memory: distributed and HF-vs-HF comparisons read both sides in chunks of
// chunk_elements; against HF, the HF side of one parameter is assembled whole
// (fsdp/checkpoint/hf_parameter_reader.h), which a debugger can afford.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>
#include <vector>

#include "fsdp/launch/inspect/name_filter.h"
#include "fsdp/launch/inspect/statistics_table.h"
#include "fsdp/launch/inspect/tensor_source.h"

namespace fsdp::inspect {

struct DiffOptions {
  double tolerance = 0;  // on the largest absolute difference
  NameFilter filter;
  std::int64_t chunk_elements = kDefaultChunkElements;
};

enum class DiffStatus { kCompared, kOnlyInFirst, kOnlyInSecond, kShapeDiffers };

struct DiffRow {
  std::string name;
  DiffStatus status = DiffStatus::kCompared;
  std::vector<std::int64_t> first_shape, second_shape;
  std::string first_dtype, second_dtype;
  std::int64_t numel = 0;
  std::int64_t elements_beyond_tolerance = 0;
  double max_abs_difference = 0;
  double max_relative_difference = 0;
  bool differs = false;
};

struct DiffReport {
  std::string first, second;  // the paths
  std::string method;         // how parameters were matched
  double tolerance = 0;
  std::vector<DiffRow> rows;  // the first's order, then what only the second has
  std::size_t differing() const;
};

// Element-wise comparison of two equally long runs of values, accumulated.
class DifferenceAccumulator {
 public:
  explicit DifferenceAccumulator(double tolerance) : tolerance_(tolerance) {}
  // REQUIRES: a.numel() == b.numel() (any dtypes, CPU).
  void add(const at::Tensor& a, const at::Tensor& b);
  void store(DiffRow& row) const;

 private:
  double tolerance_;
  std::int64_t beyond_ = 0;
  double max_abs_ = 0;
  double max_relative_ = 0;
};

// Throws checkpoint::CheckpointError for unreadable or corrupt input, and, for
// a distributed checkpoint against HF, when the checkpoint's training config
// has no model or the HF tensors do not fit the conversion rules.
DiffReport diff_sources(TensorSource& first, TensorSource& second, const DiffOptions& options);

// A header, one row per parameter, then "N of M parameters differ beyond tol T".
std::string diff_text(const DiffReport& report);
// {"first", "second", "method", "tolerance", "parameters": [{"name", "status"
//  ("compared", "only_in_first", "only_in_second", "shape_differs"), "first_shape",
//  "second_shape", "first_dtype", "second_dtype", "numel", "max_abs_difference",
//  "max_relative_difference", "elements_beyond_tolerance", "differs"}],
//  "summary": {"differing", "parameters", "tolerance", "text"}}
nlohmann::json diff_json(const DiffReport& report);

}  // namespace fsdp::inspect
