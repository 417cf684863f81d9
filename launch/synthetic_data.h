// The data of fsdp-train's demo: token sequences generated from the seed and
// the step alone, so that nothing is downloaded, every rank can generate its
// own rows without communicating, a resumed run sees exactly the batches an
// uninterrupted one would, and every world size that divides the batch trains
// on the same global batch.
//
// Each sequence is an arithmetic progression modulo the vocabulary, with a
// random start and a random stride from {1, 2, 3, 5}: the first token cannot
// be predicted, the rest can once two tokens have shown the stride, so the
// loss falls from ln(vocabulary) towards ln(vocabulary) / length -- a curve
// that shows learning, not memorisation.
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
