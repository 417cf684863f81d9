// Validation loss: the mean next-token cross-entropy over every window of a
// token dataset, in order -- the sum of the token losses divided by the
// number of predicted tokens, so that the figure depends neither on the world
// size nor on how many rows each forward takes (up to the order of the final
// sums, which are in double precision).
#pragma once

#include <c10/core/Device.h>

#include <cstdint>

#include "fsdp/data/token_dataset.h"
#include "fsdp/process_group.h"
#include "fsdp/stages/multi_stage_model.h"

namespace fsdp::launch {

struct EvaluationResult {
  double loss = 0;           // mean over `predicted_tokens`
  std::int64_t windows = 0;  // every window of the dataset
  std::int64_t predicted_tokens = 0;
};

// Forward only (no autograd, the weights unchanged). Windows are dealt out in
// rounds of `rows_per_forward` per rank: round r gives rank k windows
// [(r * world + k) * rows_per_forward, ... + rows_per_forward). In the last
// round the ranks past the end compute on a copy of window 0 and ignore it,
// so every rank runs the same number of forwards (each one a collective under
// ZeRO-3). `host_group` sums the losses; `device` is where the model computes.
// Collective. REQUIRES: rows_per_forward >= 1.
EvaluationResult evaluate_next_token_loss(stages::MultiStageModel& model,
                                          const data::TokenDataset& data,
                                          std::int64_t rows_per_forward, ProcessGroup& host_group,
                                          c10::Device device);

}  // namespace fsdp::launch
