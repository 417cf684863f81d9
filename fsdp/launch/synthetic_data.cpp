#include "fsdp/launch/synthetic_data.h"

#include <ATen/ATen.h>

#include <stdexcept>
#include <string>
#include <vector>

#include "fsdp/initializer.h"

namespace fsdp::launch {

at::Tensor synthetic_batch_rows(const SyntheticBatchSpec& spec, std::int64_t step,
                                std::int64_t first_row, std::int64_t rows) {
  if (first_row < 0 || rows < 0 || first_row + rows > spec.global_batch) {
    throw std::invalid_argument("synthetic data: rows [" + std::to_string(first_row) + ", " +
                                std::to_string(first_row + rows) + ") outside a batch of " +
                                std::to_string(spec.global_batch));
  }
  // Two uniform draws per row from the counter-based stream of the weight
  // initialiser (fsdp/initializer.h): element i depends only on (key, i), so
  // any rank draws any row without the others.
  const std::uint64_t key =
      parameter_stream_key(spec.seed, "synthetic-data/step-" + std::to_string(step));
  std::vector<double> draws(static_cast<std::size_t>(2 * rows));
  fill_initial_values(ParameterInit::uniform(0, 1), key, 2 * first_row, 2 * rows, draws.data());
  const auto uniform = at::tensor(draws, at::kDouble).view({rows, 2});
  const auto start =
      (uniform.select(1, 0) * static_cast<double>(spec.vocabulary)).floor().to(at::kLong);
  const auto strides = at::tensor(std::vector<std::int64_t>{1, 2, 3, 5}, at::kLong);
  const auto stride =
      strides.index_select(0, (uniform.select(1, 1) * 4).floor().to(at::kLong).clamp(0, 3));
  const auto positions = at::arange(spec.sequence_length + 1, at::kLong).view({1, -1});
  return (start.view({rows, 1}) + stride.view({rows, 1}) * positions).remainder(spec.vocabulary);
}

}  // namespace fsdp::launch
