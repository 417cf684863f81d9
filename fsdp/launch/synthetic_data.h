// The data of fsdp-train's demo: token sequences generated from the seed and
// the step alone, so that nothing is downloaded, every rank can generate its
// own rows without communicating, a resumed run sees exactly the batches an
// uninterrupted one would, and every world size that divides the batch trains
// on the same global batch.
//
// Each sequence is an arithmetic progression modulo the vocabulary, with a
// random start and a random stride from {1, 2, 3, 5}. The first target (the
// second token) depends on a stride the model cannot know yet; every later
// one follows from what came before. So the loss falls from ln(vocabulary)
// towards ln(4) / sequence_length (about 0.03 for 48 tokens): a curve that
// shows learning in context, not memorisation.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace fsdp::launch {

struct SyntheticBatchSpec {
  std::uint64_t seed = 1;
  std::int64_t global_batch = 24;
  std::int64_t sequence_length = 32;  // tokens a model sees; rows hold one more (the targets)
  std::int64_t vocabulary = 64;
};

// Rows [first_row, first_row + rows) of the global batch of `step`, as int64
// tokens of shape [rows, sequence_length + 1]: inputs are [:, :-1], targets
// [:, 1:]. A pure function of its arguments.
// REQUIRES: 0 <= first_row, first_row + rows <= spec.global_batch.
at::Tensor synthetic_batch_rows(const SyntheticBatchSpec& spec, std::int64_t step,
                                std::int64_t first_row, std::int64_t rows);

}  // namespace fsdp::launch
