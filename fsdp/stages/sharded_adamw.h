// AdamW over the shards of one or more stages: each rank updates only its own
// slice of every weight, with optimizer state (exp_avg, exp_avg_sq) kept as
// shards beside it -- ZeRO's optimizer-state partitioning.
//
// One step, per stage, is one fused kernel call per run of parameters that
// share a weight-decay setting (fsdp/kernels/adamw.h); padding is never touched and
// stays zero. Gradient clipping uses the *global* norm: every rank sums the
// squares of its own gradient shards (padding excluded), one all-reduce adds
// them up, and every rank scales by the same coefficient, exactly as
// torch.nn.utils.clip_grad_norm_ would on the unsharded gradients. After the
// step every stage is invalidated: its buffer no longer matches its shard.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <vector>

#include "fsdp/fsdp.h"
#include "fsdp/kernels/adamw.h"

namespace fsdp::stages {

// The usual rule: weight decay on matrices and embeddings (2 or more
// dimensions), none on norms, biases and scalars.
bool decays_by_default(const ParameterSlot& parameter);

struct ShardedAdamWOptions {
  double beta1 = 0.9;
  double beta2 = 0.999;
  double epsilon = 1e-8;
  double weight_decay = 0.01;
  // Clip the global gradient norm to this value; 0 disables clipping.
  double max_gradient_norm = 0.0;
  std::function<bool(const ParameterSlot&)> decays = decays_by_default;
};

class ShardedAdamW {
 public:
  // REQUIRES: the stages outlive the optimizer, have float32 shards, and share
  // one process group size. Allocates exp_avg and exp_avg_sq shards (zeroed)
  // beside each stage's shards. Throws std::invalid_argument otherwise.
  ShardedAdamW(std::vector<Fsdp*> stages, ShardedAdamWOptions options);

  // Takes one step with `learning_rate` on every stage, from the gradient
  // shards, and invalidates the stages. Collective (when clipping, or always:
  // the norm is computed either way). Returns the global gradient norm before
  // clipping. When that norm is not finite (a NaN or Inf in any rank's
  // gradients: every rank sees the same norm) nothing is updated -- no weight,
  // no moment, no step count -- and the norm is returned for the caller to
  // report the skipped step (a NaN step would otherwise poison every weight,
  // clipping included: min(1, max / NaN) is 1).
  double step(double learning_rate);

  // sqrt of the sum over all ranks and stages of the squared gradient shards,
  // padding excluded. Collective.
  double global_gradient_norm() const;

  std::int64_t steps_taken() const { return steps_taken_; }
  // For loading a checkpoint: the step count that bias correction continues
  // from. The moment shards are written in place through exp_avg()/exp_avg_sq().
  void set_steps_taken(std::int64_t steps) { steps_taken_ = steps; }
  const at::Tensor& exp_avg(std::size_t stage) const { return states_.at(stage).exp_avg; }
  const at::Tensor& exp_avg_sq(std::size_t stage) const { return states_.at(stage).exp_avg_sq; }
  // Bytes of optimizer state this rank holds.
  std::int64_t state_bytes() const;

 private:
  struct DecayRun {
    std::int64_t begin;  // shard offsets
    std::int64_t end;
    bool decays;
  };
  struct StageState {
    at::Tensor exp_avg;
    at::Tensor exp_avg_sq;
    std::vector<DecayRun> runs;
    std::int64_t data_elements;  // the shard's non-padding prefix
  };

  std::vector<Fsdp*> stages_;
  ShardedAdamWOptions options_;
  std::vector<StageState> states_;
  std::int64_t steps_taken_ = 0;
};

}  // namespace fsdp::stages
