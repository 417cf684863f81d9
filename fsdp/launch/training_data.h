// fsdp-train's batches: the synthetic sequences (fsdp/launch/synthetic_data.h) or
// the windows of token files (fsdp/data/token_dataset.h), drawn in the order of
// fsdp/data/window_order.h. Either way a step's global batch depends only on the
// seed, the step and the data, never on the world size or micro-batches, and
// each rank reads only its own rows, without communicating.
#pragma once

#include <ATen/core/Tensor.h>

#include <memory>
#include <optional>
#include <string>

#include "fsdp/data/token_dataset.h"
#include "fsdp/data/window_order.h"
#include "fsdp/launch/train_options.h"

namespace fsdp::launch {

// Opens --data (option "data") or --eval-data ("eval-data") as windows of
// --seq-len + 1 tokens. Throws data::DataError, its message starting with the
// option ("--data: train.npy: ...").
data::TokenDataset open_token_data(const std::string& option, const TrainOptions& options);

class TrainingData {
 public:
  // The token files of options.data, or the synthetic sequences when it is empty.
  explicit TrainingData(const TrainOptions& options);

  // Rows [first_row, first_row + rows) of the global batch of `step` (from
  // 1), as int64 tokens [rows, sequence_length + 1]: inputs are [:, :-1],
  // targets [:, 1:]. REQUIRES: the rows lie inside the global batch.
  at::Tensor batch_rows(std::int64_t step, std::int64_t first_row, std::int64_t rows) const;

  // What rank `rank` of `world_size` trains on in micro-batch `micro` of
  // `step`: rank r owns rows [r * B / W, (r + 1) * B / W) of the global batch
  // B, cut into options.micro_batches consecutive micro-batches.
  // REQUIRES: W x micro-batches divides B (train_options_from checks it).
  at::Tensor micro_batch(std::int64_t step, int rank, int world_size, std::int64_t micro) const;

  // The banner's description: the source and, for token files, how many
  // windows and tokens they hold and how many epochs `steps` steps make.
  std::string describe(std::int64_t steps) const;

 private:
  const TrainOptions& options_;
  std::optional<data::TokenDataset> tokens_;
  std::optional<data::WindowOrder> order_;
};

}  // namespace fsdp::launch
