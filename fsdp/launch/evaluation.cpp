#include "fsdp/launch/evaluation.h"

#include <ATen/ATen.h>

#include <stdexcept>
#include <vector>

#include "fsdp/tensor_span.h"

namespace fsdp::launch {

EvaluationResult evaluate_next_token_loss(stages::MultiStageModel& model,
                                          const data::TokenDataset& data,
                                          std::int64_t rows_per_forward, ProcessGroup& host_group,
                                          c10::Device device) {
  if (rows_per_forward < 1) {
    throw std::invalid_argument("evaluation: " + std::to_string(rows_per_forward) +
                                " rows per forward (expected at least 1)");
  }
  const std::int64_t windows = data.windows();
  const std::int64_t length = data.window_tokens() - 1;  // predicted tokens per window
  const std::int64_t per_round = rows_per_forward * host_group.size();
  const std::int64_t rounds = (windows + per_round - 1) / per_round;
  // This rank's token-loss sum, accumulated window by window in order.
  std::vector<double> sum = {0.0};
  auto tokens = at::empty({rows_per_forward, data.window_tokens()}, at::kLong);
  for (std::int64_t round = 0; round < rounds; ++round) {
    const std::int64_t first = (round * host_group.size() + host_group.rank()) * rows_per_forward;
    const std::int64_t valid =
        std::max<std::int64_t>(0, std::min(rows_per_forward, windows - first));
    auto* out = tokens.data_ptr<std::int64_t>();
    for (std::int64_t row = 0; row < rows_per_forward; ++row) {
      data.read_window(row < valid ? first + row : 0, out + row * data.window_tokens());
    }
    const auto on_device = device.is_cuda() ? tokens.to(device) : tokens;
    const auto logits = model.forward(on_device.narrow(1, 0, length));
    const auto token_losses =
        at::cross_entropy_loss(logits.reshape({-1, logits.size(-1)}).to(at::kFloat),
                               on_device.narrow(1, 1, length).reshape({-1}), {},
                               at::Reduction::None)
            .reshape({rows_per_forward, length})
            .to(at::kCPU, at::kDouble)
            .sum(1);
    const auto* row_sums = token_losses.data_ptr<double>();
    for (std::int64_t row = 0; row < valid; ++row) sum[0] += row_sums[row];
  }
  host_group.all_reduce(host_span(sum), ReduceOp::kSum);
  EvaluationResult result;
  result.windows = windows;
  result.predicted_tokens = windows * length;
  result.loss = sum[0] / static_cast<double>(result.predicted_tokens);
  return result;
}

}  // namespace fsdp::launch
