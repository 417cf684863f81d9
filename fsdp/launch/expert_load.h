// How evenly an MoE model's routers spread tokens over their experts: the
// figure fsdp-train's progress lines, summary and metrics report.
//
// The load of one routing layer is max over experts / mean over experts of
// the tokens each expert received: 1.0 is perfectly even, E / k means every
// token went to the same k of E experts. A step's figure is its worst layer;
// the window's figures sum each layer's counts over the last `window` steps
// first (one step of a small batch is noisy), then take the worst layer and
// the mean over layers.
#pragma once

#include <cstddef>
#include <deque>
#include <vector>

#include "fsdp/stages/multi_stage_model.h"

namespace fsdp::launch {

// The tokens per expert of every routing layer, as one flat row-major
// vector of layers x experts (a stacked layer gives a row per block), for an
// all-reduce. `experts` receives the row length (0 when nothing routes).
std::vector<double> flatten_expert_tokens(const stages::AuxiliaryTotals& totals,
                                          std::size_t& experts);

// Max over mean of each row of `counts` (rows of `experts`); the largest and
// the mean over rows. Rows without tokens are skipped; {0, 0} when none has any.
struct Imbalance {
  double worst = 0;
  double mean = 0;
};
Imbalance expert_imbalance(const std::vector<double>& counts, std::size_t experts);

class ExpertLoadWindow {
 public:
  explicit ExpertLoadWindow(std::size_t steps) : steps_(steps) {}
  // One step's counts (same layout every step).
  void add(const std::vector<double>& counts, std::size_t experts);
  // Over the steps in the window, each layer's counts summed first.
  Imbalance imbalance() const;
  std::size_t steps() const { return counts_.size(); }

 private:
  std::size_t steps_;
  std::size_t experts_ = 0;
  std::deque<std::vector<double>> counts_;
};

}  // namespace fsdp::launch
