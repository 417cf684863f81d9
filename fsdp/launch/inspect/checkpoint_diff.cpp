#include "fsdp/launch/inspect/checkpoint_diff.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cstdio>
#include <limits>
#include <sstream>
#include <stdexcept>

#include "fsdp/checkpoint/checkpoint_error.h"
#include "fsdp/checkpoint/conversion_rules.h"
#include "fsdp/checkpoint/hf_parameter_reader.h"
#include "fsdp/launch/inspect/json_number.h"
#include "fsdp/launch/inspect/text_table.h"
#include "fsdp/models/hf_config.h"
#include "fsdp/models/llama_config_json.h"
#include "fsdp/models/llama_conversion.h"
#include "fsdp/torch_interop.h"

namespace fsdp::inspect {
namespace {

using checkpoint::CheckpointError;
constexpr double kInfinity = std::numeric_limits<double>::infinity();

DiffRow row_for(const TensorInfo* first, const TensorInfo* second) {
  DiffRow row;
  row.name = first ? first->name : second->name;
  if (first) {
    row.first_shape = first->shape;
    row.first_dtype = first->dtype;
    row.numel = first->numel;
  }
  if (second) {
    row.second_shape = second->shape;
    row.second_dtype = second->dtype;
    if (!first) row.numel = second->numel;
  }
  if (!second) {
    row.status = DiffStatus::kOnlyInFirst;
  } else if (!first) {
    row.status = DiffStatus::kOnlyInSecond;
  } else if (first->shape != second->shape) {
    row.status = DiffStatus::kShapeDiffers;
  }
  row.differs = row.status != DiffStatus::kCompared;
  return row;
}

// By name (distributed vs distributed) or by key (HF vs HF), chunk by chunk.
DiffReport diff_by_name(TensorSource& first, TensorSource& second, const DiffOptions& options) {
  DiffReport report;
  report.method = first.kind() == SourceKind::kHfCheckpoint ? "by key" : "by parameter name";
  for (std::size_t i = 0; i < first.tensors().size(); ++i) {
    const auto& a = first.tensors()[i];
    if (!options.filter.matches(a.name)) continue;
    const auto j = second.lookup(a.name);
    auto row = row_for(&a, j ? &second.tensors()[*j] : nullptr);
    if (row.status == DiffStatus::kCompared) {
      DifferenceAccumulator accumulator(options.tolerance);
      for_each_chunk(first, i, options.chunk_elements,
                     [&](std::int64_t begin, const at::Tensor& values) {
                       accumulator.add(values, second.read(*j, {begin, begin + values.numel()}));
                     });
      accumulator.store(row);
    }
    report.rows.push_back(std::move(row));
  }
  for (const auto& b : second.tensors()) {
    if (options.filter.matches(b.name) && !first.lookup(b.name)) {
      report.rows.push_back(row_for(nullptr, &b));
    }
  }
  return report;
}

// A distributed checkpoint against an HF one, through the conversion rules of
// the model in the checkpoint's training config.
DiffReport diff_with_hf(TensorSource& distributed, TensorSource& hf, bool distributed_first,
                        const DiffOptions& options) {
  auto& reader = *distributed.distributed();
  const auto& config = reader.index().training_config;
  if (!config.is_object() || !config.contains("model")) {
    throw CheckpointError(
        reader.source() +
        ": training_config has no \"model\" (the model's configuration, which fsdp-train "
        "records); comparing with an HF checkpoint needs it to build the conversion rules");
  }
  models::LlamaConfig model;
  try {
    model = models::llama_config_from_json(config.at("model"));
  } catch (const std::exception& error) {
    throw CheckpointError(reader.source() + ": training_config.model: " + error.what());
  }
  // The HF side names its tensors as its own config.json says (a preset MoE
  // exports as Mixtral: block_sparse_moe.experts.{e}.w1/w3/w2).
  const std::filesystem::path hf_config = std::filesystem::path(hf.path()) / "config.json";
  if (std::filesystem::is_regular_file(hf_config)) {
    try {
      model.expert_naming = models::read_hf_config(hf.path()).model.expert_naming;
    } catch (const ConfigurationError& error) {
      throw CheckpointError(error.what());
    }
  }
  std::vector<const FlatLayout*> layouts;
  for (std::size_t s = 0; s < reader.index().stages.size(); ++s)
    layouts.push_back(&reader.layout(s));
  const auto plans =
      checkpoint::plan_import(layouts, *hf.hf(), models::llama_conversion_rules(model));

  DiffReport report;
  report.method =
      "HF tensors through the conversion rules of " + reader.source() + "'s training_config.model";
  for (std::size_t s = 0; s < layouts.size(); ++s) {
    for (const auto& slot : layouts[s]->parameters()) {
      if (!options.filter.matches(slot.name)) continue;
      const std::size_t index = distributed.find(slot.name);
      const auto& info = distributed.tensors()[index];
      // The HF side as the runtime parameter it becomes: same name and shape.
      TensorInfo assembled{slot.name,
                           slot.shape,
                           slot.numel,
                           std::string(element_type_name(slot.dtype)),
                           std::string(element_type_name(slot.dtype)),
                           hf.path()};
      auto row = distributed_first ? row_for(&info, &assembled) : row_for(&assembled, &info);
      // Converted straight to the shard dtype, as an import would write it
      // (through the declared dtype, a bf16-declared parameter would round twice).
      const auto values =
          checkpoint::read_hf_parameter(plans.at(slot.name), slot, reader.shard_type(s))
              .reshape({-1});
      DifferenceAccumulator accumulator(options.tolerance);
      for_each_chunk(distributed, index, options.chunk_elements,
                     [&](std::int64_t begin, const at::Tensor& mine) {
                       const auto theirs = values.narrow(0, begin, mine.numel());
                       if (distributed_first) {
                         accumulator.add(mine, theirs);
                       } else {
                         accumulator.add(theirs, mine);
                       }
                     });
      accumulator.store(row);
      report.rows.push_back(std::move(row));
    }
  }
  return report;
}

const char* status_name(DiffStatus status) {
  switch (status) {
    case DiffStatus::kCompared:
      return "compared";
    case DiffStatus::kOnlyInFirst:
      return "only_in_first";
    case DiffStatus::kOnlyInSecond:
      return "only_in_second";
    case DiffStatus::kShapeDiffers:
      return "shape_differs";
  }
  return "?";
}

std::string summary_text(const DiffReport& report) {
  char tolerance[64];
  std::snprintf(tolerance, sizeof tolerance, "%g", report.tolerance);
  return std::to_string(report.differing()) + " of " + std::to_string(report.rows.size()) +
         " parameters differ beyond tol " + tolerance;
}

}  // namespace

void DifferenceAccumulator::add(const at::Tensor& a_values, const at::Tensor& b_values) {
  if (a_values.numel() != b_values.numel()) {
    throw std::invalid_argument("DifferenceAccumulator::add: " + std::to_string(a_values.numel()) +
                                " values against " + std::to_string(b_values.numel()));
  }
  if (a_values.numel() == 0) return;
  const auto a = a_values.reshape({-1}).to(at::kDouble);
  const auto b = b_values.reshape({-1}).to(at::kDouble);
  const auto equal = a.eq(b).logical_or_(a.isnan().logical_and_(b.isnan()));
  // Where the values are not `equal`, a - b is NaN only for a NaN against a
  // number (NaN against NaN and infinities of one sign are `equal`): an
  // infinite difference. |inf - x| is infinite already.
  auto absolute = (a - b).abs_().masked_fill_(equal, 0.0);
  absolute.masked_fill_(absolute.isnan(), kInfinity);
  auto relative = absolute / at::maximum(a.abs(), b.abs());
  relative.masked_fill_(equal, 0.0);
  relative.masked_fill_(relative.isnan(), kInfinity);
  max_abs_ = std::max(max_abs_, absolute.max().item<double>());
  max_relative_ = std::max(max_relative_, relative.max().item<double>());
  beyond_ += absolute.gt(tolerance_).sum().item<std::int64_t>();
}

void DifferenceAccumulator::store(DiffRow& row) const {
  row.max_abs_difference = max_abs_;
  row.max_relative_difference = max_relative_;
  row.elements_beyond_tolerance = beyond_;
  row.differs = row.differs || !(max_abs_ <= tolerance_);
}

std::size_t DiffReport::differing() const {
  std::size_t count = 0;
  for (const auto& row : rows) count += row.differs ? 1 : 0;
  return count;
}

DiffReport diff_sources(TensorSource& first, TensorSource& second, const DiffOptions& options) {
  const bool first_distributed = first.kind() == SourceKind::kDistributedCheckpoint;
  const bool second_distributed = second.kind() == SourceKind::kDistributedCheckpoint;
  DiffReport report = first_distributed == second_distributed
                          ? diff_by_name(first, second, options)
                          : (first_distributed ? diff_with_hf(first, second, true, options)
                                               : diff_with_hf(second, first, false, options));
  report.first = first.path();
  report.second = second.path();
  report.tolerance = options.tolerance;
  return report;
}

std::string diff_text(const DiffReport& report) {
  std::ostringstream out;
  out << "diff " << report.first << " (first) against " << report.second << " (second), "
      << report.method << "\n";
  std::vector<std::vector<std::string>> cells = {
      {"name", "shape", "max_abs_diff", "max_rel_diff", "beyond_tol", "result"}};
  for (const auto& row : report.rows) {
    std::string result = row.differs ? "DIFFERS" : "ok";
    if (row.status == DiffStatus::kOnlyInFirst) result = "only in first";
    if (row.status == DiffStatus::kOnlyInSecond) result = "only in second";
    if (row.status == DiffStatus::kShapeDiffers) {
      result = "shape " + checkpoint::format_shape(row.first_shape) + " vs " +
               checkpoint::format_shape(row.second_shape);
    }
    const bool compared = row.status == DiffStatus::kCompared;
    cells.push_back(
        {row.name,
         checkpoint::format_shape(row.status == DiffStatus::kOnlyInSecond ? row.second_shape
                                                                          : row.first_shape),
         compared ? format_number(row.max_abs_difference) : "-",
         compared ? format_number(row.max_relative_difference) : "-",
         compared ? std::to_string(row.elements_beyond_tolerance) : "-", result});
  }
  const std::size_t columns = cells.front().size();
  // Name and shape left-aligned, and the verdict; the numbers right-aligned.
  out << render_text_table(cells, [columns](std::size_t c) { return c < 2 || c + 1 == columns; });
  out << summary_text(report) << "\n";
  return out.str();
}

nlohmann::json diff_json(const DiffReport& report) {
  auto rows = nlohmann::json::array();
  for (const auto& row : report.rows) {
    rows.push_back({{"name", row.name},
                    {"status", status_name(row.status)},
                    {"first_shape", row.first_shape},
                    {"second_shape", row.second_shape},
                    {"first_dtype", row.first_dtype},
                    {"second_dtype", row.second_dtype},
                    {"numel", row.numel},
                    {"max_abs_difference", json_number(row.max_abs_difference)},
                    {"max_relative_difference", json_number(row.max_relative_difference)},
                    {"elements_beyond_tolerance", row.elements_beyond_tolerance},
                    {"differs", row.differs}});
  }
  return {{"first", report.first},
          {"second", report.second},
          {"method", report.method},
          {"tolerance", json_number(report.tolerance)},
          {"parameters", rows},
          {"summary",
           {{"differing", report.differing()},
            {"parameters", report.rows.size()},
            {"tolerance", json_number(report.tolerance)},
            {"text", summary_text(report)}}}};
}

}  // namespace fsdp::inspect
