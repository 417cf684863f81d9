// --param NAME [--slice SPEC]: the values of one tensor, read by element
// ranges so that only what is shown is read (at most a few checksum blocks
// per row shown, never the whole tensor for a small slice of it).
//
// A selection of at most `max_values` values is shown whole. A larger one is
// summarised as torch prints big tensors: every kept dimension longer than
// 2 x edge_items shows its first and last edge_items indices, with "..."
// between, so at most (2 x edge_items)^dimensions values are read.
#pragma once

#include <ATen/core/Tensor.h>
#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>
#include <vector>

#include "fsdp/launch/inspect/slice_spec.h"
#include "fsdp/launch/inspect/tensor_source.h"

namespace fsdp::inspect {

struct ValuesOptions {
  std::string slice;  // --slice, "" for the whole tensor
  std::int64_t max_values = 1000;
  std::int64_t edge_items = 3;
};

struct ParameterValues {
  TensorInfo tensor;
  std::string slice;
  std::vector<std::int64_t> selected_shape;  // the slice's shape
  std::int64_t selected_numel = 0;
  bool summarized = false;
  // Per kept dimension: the tensor indices of the values shown, and whether a
  // summary left indices out after the first edge_items of them.
  std::vector<std::vector<std::int64_t>> indices;
  std::vector<bool> cut;
  at::Tensor values;  // float64, one dimension per kept dimension (sizes of `indices`)
};

// Throws checkpoint::CheckpointError for an unknown name or unreadable data,
// UsageError for a bad slice.
ParameterValues read_parameter_values(TensorSource& source, std::string_view name,
                                      const ValuesOptions& options);

// Text: a header line, then the values nested in brackets, each printed with
// `precision` significant digits.
std::string values_text(const ParameterValues& values, int precision);
// {"name", "shape", "dtype", "declared_dtype", "group", "slice", "selected_shape",
//  "selected_numel", "summarized", "indices": per kept dimension, "values": nested arrays}
nlohmann::json values_json(const ParameterValues& values);

}  // namespace fsdp::inspect
