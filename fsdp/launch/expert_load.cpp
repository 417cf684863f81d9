#include "fsdp/launch/expert_load.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <stdexcept>

namespace fsdp::launch {

std::vector<double> flatten_expert_tokens(const stages::AuxiliaryTotals& totals,
                                          std::size_t& experts) {
  std::vector<double> flat;
  experts = 0;
  for (const auto& [layer, tokens] : totals.expert_tokens) {
    const at::Tensor rows = tokens.to(at::kDouble).contiguous().reshape({-1, tokens.size(-1)});
    const auto width = static_cast<std::size_t>(rows.size(1));
    if (experts != 0 && width != experts) {
      throw std::logic_error("expert load: layers with different numbers of experts");
    }
    experts = width;
    const double* data = rows.data_ptr<double>();
    flat.insert(flat.end(), data, data + rows.numel());
  }
  return flat;
}

Imbalance expert_imbalance(const std::vector<double>& counts, std::size_t experts) {
  Imbalance result;
  if (experts == 0) return result;
  std::size_t rows = 0;
  for (std::size_t first = 0; first + experts <= counts.size(); first += experts) {
    const auto begin = counts.begin() + static_cast<std::ptrdiff_t>(first);
    const auto end = begin + static_cast<std::ptrdiff_t>(experts);
    double sum = 0;
    for (auto it = begin; it != end; ++it) sum += *it;
    if (sum <= 0) continue;
    const double ratio = *std::max_element(begin, end) / (sum / static_cast<double>(experts));
    result.worst = std::max(result.worst, ratio);
    result.mean += ratio;
    ++rows;
  }
  if (rows > 0) result.mean /= static_cast<double>(rows);
  return result;
}

void ExpertLoadWindow::add(const std::vector<double>& counts, std::size_t experts) {
  if (experts == 0) return;
  experts_ = experts;
  counts_.push_back(counts);
  if (counts_.size() > steps_) counts_.pop_front();
}

Imbalance ExpertLoadWindow::imbalance() const {
  if (counts_.empty()) return {};
  std::vector<double> sum(counts_.front().size(), 0.0);
  for (const auto& step : counts_) {
    for (std::size_t i = 0; i < sum.size() && i < step.size(); ++i) sum[i] += step[i];
  }
  return expert_imbalance(sum, experts_);
}

}  // namespace fsdp::launch
