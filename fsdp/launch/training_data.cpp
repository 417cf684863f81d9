#include "fsdp/launch/training_data.h"

#include <ATen/ATen.h>

#include <cstdio>
#include <stdexcept>

#include "fsdp/data/data_error.h"
#include "fsdp/launch/synthetic_data.h"

namespace fsdp::launch {

data::TokenDataset open_token_data(const std::string& option, const TrainOptions& options) {
  const std::string& path = option == "data" ? options.data : options.eval_data;
  std::optional<data::TokenDtype> raw_dtype;
  if (!options.data_dtype.empty()) raw_dtype = data::token_dtype_from_name(options.data_dtype);
  try {
    return data::TokenDataset::open(path, raw_dtype, options.sequence_length + 1);
  } catch (const data::DataError& error) {
    throw data::DataError("--" + option + ": " + error.what());
  }
}

TrainingData::TrainingData(const TrainOptions& options) : options_(options) {
  if (options.data.empty()) return;
  tokens_.emplace(open_token_data("data", options));
  order_.emplace(options.seed, tokens_->windows());
}

at::Tensor TrainingData::batch_rows(std::int64_t step, std::int64_t first_row,
                                    std::int64_t rows) const {
  if (!tokens_) {
    const SyntheticBatchSpec spec{options_.seed, options_.batch, options_.sequence_length,
                                  options_.model.vocabulary};
    return synthetic_batch_rows(spec, step, first_row, rows);
  }
  if (step < 1 || first_row < 0 || rows < 0 || first_row + rows > options_.batch) {
    throw std::invalid_argument("training data: rows [" + std::to_string(first_row) + ", " +
                                std::to_string(first_row + rows) + ") of step " +
                                std::to_string(step) + " outside a batch of " +
                                std::to_string(options_.batch));
  }
  auto batch = at::empty({rows, tokens_->window_tokens()}, at::kLong);
  auto* out = batch.data_ptr<std::int64_t>();
  for (std::int64_t row = 0; row < rows; ++row) {
    const std::int64_t draw = (step - 1) * options_.batch + first_row + row;
    tokens_->read_window(order_->window_of(draw), out + row * tokens_->window_tokens());
  }
  return batch;
}

at::Tensor TrainingData::micro_batch(std::int64_t step, int rank, int world_size,
                                     std::int64_t micro) const {
  const std::int64_t local_batch = options_.batch / world_size;
  const std::int64_t micro_rows = local_batch / options_.micro_batches;
  return batch_rows(step, rank * local_batch + micro * micro_rows, micro_rows);
}

std::string TrainingData::describe(std::int64_t steps) const {
  if (!tokens_) return "synthetic sequences (seed " + std::to_string(options_.seed) + ")";
  const double epochs = static_cast<double>(steps) * static_cast<double>(options_.batch) /
                        static_cast<double>(tokens_->windows());
  char text[64];
  std::snprintf(text, sizeof text, "%.2f", epochs);
  return "tokens, " + tokens_->describe() + " (" + text + " epochs in " + std::to_string(steps) +
         " steps, order seed " + std::to_string(options_.seed) + ")";
}

}  // namespace fsdp::launch
