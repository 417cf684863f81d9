#include "fsdp/launch/inspect/parameter_values.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <sstream>

#include "fsdp/checkpoint/safetensors_format.h"
#include "fsdp/launch/inspect/json_number.h"
#include "fsdp/launch/inspect/text_table.h"

namespace fsdp::inspect {
namespace {

// Indices of the last dimension closer than this are read as one range (and
// the values between them dropped): fewer, larger reads.
constexpr std::int64_t kMaxGap = 64;

// Reads the elements of `selection` of tensor `index` in row-major order of
// the selection, as float64.
std::vector<double> read_selection(TensorSource& source, std::size_t index,
                                   const Selection& selection) {
  const auto& shape = source.tensors().at(index).shape;
  std::vector<double> values;
  const std::int64_t numel = selection.numel();
  if (numel == 0) return values;
  values.reserve(static_cast<std::size_t>(numel));
  if (shape.empty()) {
    const auto value = source.read(index, {0, 1}).to(at::kDouble);
    values.push_back(value.data_ptr<double>()[0]);
    return values;
  }
  const std::size_t dims = shape.size();
  std::vector<std::int64_t> strides(dims, 1);
  for (std::size_t d = dims - 1; d > 0; --d) strides[d - 1] = strides[d] * shape[d];
  const auto& last = selection.indices[dims - 1];
  // An odometer over the outer dimensions' selected indices.
  std::vector<std::size_t> position(dims - 1, 0);
  while (true) {
    std::int64_t base = 0;
    for (std::size_t d = 0; d + 1 < dims; ++d)
      base += selection.indices[d][position[d]] * strides[d];
    for (std::size_t i = 0; i < last.size();) {
      std::size_t j = i + 1;
      while (j < last.size() && last[j] - last[j - 1] <= kMaxGap) ++j;
      const auto run = source.read(index, {base + last[i], base + last[j - 1] + 1}).to(at::kDouble);
      const double* data = run.data_ptr<double>();
      for (std::size_t k = i; k < j; ++k) values.push_back(data[last[k] - last[i]]);
      i = j;
    }
    std::size_t d = dims - 1;
    while (d > 0) {
      --d;
      if (++position[d] < selection.indices[d].size()) break;
      position[d] = 0;
      if (d == 0) return values;
    }
    if (dims == 1) return values;
  }
}

// Appends `values` (float64, contiguous) nested in brackets, torch-style.
void append_nested(std::ostringstream& out, const double* values,
                   const std::vector<std::int64_t>& sizes, const std::vector<bool>& cut,
                   std::int64_t edge, std::size_t dim, int width, int precision) {
  std::int64_t inner = 1;
  for (std::size_t d = dim + 1; d < sizes.size(); ++d) inner *= sizes[d];
  out << "[";
  for (std::int64_t i = 0; i < sizes[dim]; ++i) {
    if (i > 0) {
      out << ",";
      if (dim + 1 < sizes.size()) {
        out << "\n" << std::string(dim + 1, ' ');
      } else {
        out << " ";
      }
    }
    if (cut[dim] && i == edge) {
      out << "..." << (dim + 1 < sizes.size() ? ",\n" + std::string(dim + 1, ' ') : ", ");
    }
    if (dim + 1 < sizes.size()) {
      append_nested(out, values + i * inner, sizes, cut, edge, dim + 1, width, precision);
    } else {
      const auto text = format_number(values[i], precision);
      out << std::string(static_cast<std::size_t>(std::max<int>(0, width - text.size())), ' ')
          << text;
    }
  }
  out << "]";
}

nlohmann::json nested_json(const double* values, const std::vector<std::int64_t>& sizes,
                           std::size_t dim) {
  if (dim == sizes.size()) return json_number(values[0]);
  std::int64_t inner = 1;
  for (std::size_t d = dim + 1; d < sizes.size(); ++d) inner *= sizes[d];
  auto array = nlohmann::json::array();
  for (std::int64_t i = 0; i < sizes[dim]; ++i)
    array.push_back(nested_json(values + i * inner, sizes, dim + 1));
  return array;
}

}  // namespace

ParameterValues read_parameter_values(TensorSource& source, std::string_view name,
                                      const ValuesOptions& options) {
  const std::size_t index = source.find(name);
  ParameterValues result;
  result.tensor = source.tensors()[index];
  result.slice = options.slice;
  auto selection = resolve_slice(parse_slice(options.slice), result.tensor.shape);
  result.selected_shape = selection.shape();
  result.selected_numel = selection.numel();
  result.summarized = result.selected_numel > options.max_values;
  const std::size_t edge = static_cast<std::size_t>(std::max<std::int64_t>(1, options.edge_items));
  for (std::size_t d = 0; d < selection.indices.size(); ++d) {
    auto& list = selection.indices[d];
    bool cut = false;
    if (result.summarized && selection.kept[d] && list.size() > 2 * edge) {
      list.erase(list.begin() + static_cast<std::ptrdiff_t>(edge),
                 list.end() - static_cast<std::ptrdiff_t>(edge));
      cut = true;
    }
    if (selection.kept[d]) {
      result.indices.push_back(list);
      result.cut.push_back(cut);
    }
  }
  const auto values = read_selection(source, index, selection);
  result.values = at::tensor(values, at::kDouble).reshape(selection.shape());
  return result;
}

std::string values_text(const ParameterValues& values, int precision) {
  std::ostringstream out;
  const auto& tensor = values.tensor;
  out << tensor.name << ": " << checkpoint::format_shape(tensor.shape) << " " << tensor.dtype;
  if (tensor.declared_dtype != tensor.dtype) out << " (declared " << tensor.declared_dtype << ")";
  out << ", in " << tensor.group << "\n";
  if (!values.slice.empty()) out << "slice [" << values.slice << "]: ";
  out << checkpoint::format_shape(values.selected_shape) << ", " << values.selected_numel
      << (values.selected_numel == 1 ? " value" : " values");
  if (values.summarized) {
    out << " (showing " << values.values.numel()
        << ": the first and last of each long dimension; --max-values N shows up to N)";
  }
  out << "\n";
  const auto contiguous = values.values.contiguous();
  const double* data = contiguous.data_ptr<double>();
  if (values.indices.empty()) {
    out << format_number(data[0], precision) << "\n";
    return out.str();
  }
  if (contiguous.numel() == 0) {
    out << "[]\n";
    return out.str();
  }
  int width = 0;
  for (std::int64_t i = 0; i < contiguous.numel(); ++i)
    width = std::max<int>(width, format_number(data[i], precision).size());
  std::int64_t edge = 0;
  for (std::size_t d = 0; d < values.cut.size(); ++d) {
    if (values.cut[d]) edge = static_cast<std::int64_t>(values.indices[d].size() / 2);
  }
  append_nested(out, data, contiguous.sizes().vec(), values.cut, edge, 0, width, precision);
  out << "\n";
  return out.str();
}

nlohmann::json values_json(const ParameterValues& values) {
  const auto contiguous = values.values.contiguous();
  const auto& tensor = values.tensor;
  return {{"name", tensor.name},
          {"shape", tensor.shape},
          {"dtype", tensor.dtype},
          {"declared_dtype", tensor.declared_dtype},
          {"group", tensor.group},
          {"slice", values.slice},
          {"selected_shape", values.selected_shape},
          {"selected_numel", values.selected_numel},
          {"summarized", values.summarized},
          {"indices", values.indices},
          {"values", nested_json(contiguous.data_ptr<double>(), contiguous.sizes().vec(), 0)}};
}

}  // namespace fsdp::inspect
