// A model split into stages, each a group of consecutive layers sharing one
// Fsdp (one flat weight shard, one buffer), run stage by stage:
//
//   forward, stage 0 .. N-1:   restore -> assert restored -> layers -> (ZeRO-3: release)
//   backward, stage N-1 .. 0:  (ZeRO-3: restore again) -> backward -> (ZeRO-3: release)
//   after the micro-batches:   reduce_gradients() -> gradient shards (average over ranks)
//
// Activations are detached at stage boundaries (the next stage's input is a
// fresh leaf), so the schedule is explicit and each stage's backward runs on
// its own: the gradient of stage s's output is stage s+1's input gradient.
//
// Data parallelism: every rank runs its own micro-batch through all stages;
// reduce_gradients() averages the gradients over ranks, so with equal local
// batches the result is the gradient of the global mean loss.
//
// ZeRO stages: 1 and 2 keep each stage restored from its forward through its
// backward (the optimizer's step invalidates it); 3 releases each stage's
// weights after its forward and restores them again before its backward. In
// this runtime 1 and 2 behave the same until gradient buffers are shared
// between stages (see stages/README.md).
//
// Thread-safety: none. Collectives: every method that restores or reduces is
// collective over the group.
#pragma once

#include <ATen/core/Tensor.h>

#include <functional>
#include <memory>
#include <vector>

#include "fsdp/fsdp.h"
#include "stages/layer.h"

namespace fsdp::stages {

struct MultiStageOptions {
  int layers_per_stage = 1;
  int zero_stage = 1;  // 1, 2 or 3
  FsdpOptions fsdp;
};

class MultiStageModel {
 public:
  using LossFunction = std::function<at::Tensor(const at::Tensor& output)>;

  // Splits `layers` into stages of options.layers_per_stage (the last may be
  // shorter), lays out and shards each stage's parameters, and binds every
  // layer to its views. Throws std::invalid_argument for a bad option, naming it.
  MultiStageModel(std::vector<std::unique_ptr<Layer>> layers, std::shared_ptr<ProcessGroup> group,
                  MultiStageOptions options);

  std::size_t stage_count() const { return stages_.size(); }
  Fsdp& stage(std::size_t index) { return *stages_.at(index).fsdp; }
  std::vector<Fsdp*> stages();
  const MultiStageOptions& options() const { return options_; }

  // Deterministic, world-size-independent weights (Fsdp::initialize_weights).
  void initialize_weights(std::uint64_t seed);

  // Sets every stage's gradient buffer to zero: call before a step's first micro-batch.
  void zero_gradients();

  // One micro-batch: forward through every stage, `loss` on the last output,
  // backward through every stage in reverse. Gradients add up in the gradient
  // buffers. Returns this rank's loss. Collective.
  double forward_backward(const at::Tensor& input, const LossFunction& loss);

  // Reduce-scatters every stage's gradients into its gradient shard (average). Collective.
  void reduce_gradients();

  // Forward only, without autograd (inference, evaluation). Collective.
  at::Tensor forward(const at::Tensor& input);

 private:
  struct Stage {
    std::unique_ptr<Fsdp> fsdp;
    std::vector<Layer*> layers;
    std::string first_parameter;  // named in the restored-state assertion
  };

  at::Tensor run_stage(Stage& stage, const at::Tensor& input);

  std::vector<std::unique_ptr<Layer>> layers_;
  std::vector<Stage> stages_;
  MultiStageOptions options_;
};

}  // namespace fsdp::stages
