// A model split into stages, each a group of consecutive layers sharing one
// Fsdp (one flat weight shard, one buffer), run stage by stage:
//
//   forward, stage 0 .. N-1:   restore -> assert restored -> layers -> (ZeRO-3: release)
//   backward, stage N-1 .. 0:  (ZeRO-3: restore again) -> backward
//                              -> (ZeRO-2/3: reduce-scatter into the gradient shard)
//                              -> (ZeRO-3: release)
//
// Activations are detached at stage boundaries (the next stage's input is a
// fresh leaf), so the schedule is explicit and each stage's backward runs on
// its own: the gradient of stage s's output is stage s+1's input gradient.
// This works the same on libtorch 1.13 and 2.x (no hooks involved).
//
// Data parallelism: every rank runs its own micro-batch through all stages;
// gradients are averaged over ranks, so with equal local batches the result
// is the gradient of the global mean loss.
//
// ZeRO stages (what each rank keeps between uses; shards are always sharded):
//   1: every stage keeps a weight buffer and a gradient buffer. Weights stay
//      restored from a stage's first forward to the optimizer step; gradients
//      add up over micro-batches in the buffers and reduce_gradients()
//      reduce-scatters them once per step.
//   2: as 1, but each stage's gradients are reduce-scattered into its gradient
//      shard as soon as its backward ends (accumulating over micro-batches), so
//      gradient buffers may be shared between stages (shared_gradient_buffers).
//   3: as 2, and weights are released after each stage's forward and restored
//      again for its backward (the last stage stays restored across the turn),
//      so weight buffers may be shared too (shared_weight_buffers): with 2
//      shared weight buffers a rank holds its shards plus 2 stage buffers.
//
// Prefetch: the next stage's all-gather (forward) or the previous one's
// (backward) starts before the current stage computes, and is finished when
// that stage is reached (Fsdp::begin_restore). On CPU it is advanced between
// layers, forward and backward (Note [Progress in the backward]), or by a
// progress thread (Note [MPI progress]); with NCCL it runs on
// the communication stream (Note [Comm stream ordering]). A buffer is never touched while a
// collective on it is in flight: Note [Buffer ordering] enforces it, and a
// prefetch into a buffer another stage still holds is simply not started.
//
// Activation checkpointing (MultiStageOptions::activation_checkpointing):
// the forward runs without autograd and keeps only the inputs of the
// checkpointed segments (a whole stage, or each layer); each segment's
// forward runs again, with autograd, right before its backward -- after the
// stage's restore that ZeRO-3 does for the backward anyway, so recomputing
// costs no extra all-gather. The recomputation is the same computation on the
// same weights and inputs, so losses and gradients are bitwise those of the
// run without checkpointing (tests/activation_checkpointing_test.cpp). A
// segment of one layer is recomputed part by part (Layer::forward_part: a
// decoder block's attention, then its MLP), so the backward holds one part's
// graph at a time, not the layer's.
//
// Auxiliary losses: after each layer's forward the model takes its side
// outputs (Layer::take_side_outputs): an auxiliary loss (a router's
// balancing loss) is differentiated with the layer's output, weighted by
// forward_backward's `auxiliary_weight`; its value and the experts' token
// counts add up in auxiliary totals (take_auxiliary_totals()). Recomputed
// forwards record nothing, so nothing is counted twice.
//
// Tied parameters: a parameter name declared by more than one layer (for
// example "embedding.weight" by the embedding and by the output head) is one
// parameter. It lives in a separate stage ("stage.tied") with its own
// buffers, restored from the first forward to the end of the backward; every
// layer that declares it is bound to the same view, so autograd sums the
// gradients of all its uses into one gradient, reduced once.
//
// Thread-safety: none. Collectives: every method that restores or reduces is
// collective over the group.
#pragma once

#include <ATen/core/Tensor.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "fsdp/fsdp.h"
#include "fsdp/stages/layer.h"

namespace fsdp::stages {

class ShardedAdamW;

// What the forward keeps for the backward.
enum class ActivationCheckpointing {
  kNone,    // every stage's autograd graph, from its forward to its backward
  kStages,  // each stage's input; the stage's forward runs again before its backward
  kLayers,  // each layer's input; layers run again one at a time in the backward,
            // so at most one layer's graph (its attention scores) is alive
};
// "none", "stages", "layers" (the --activation-checkpointing spellings).
const char* activation_checkpointing_name(ActivationCheckpointing mode);
// Throws std::invalid_argument naming the value and the accepted ones.
ActivationCheckpointing parse_activation_checkpointing(const std::string& name);

// The shared-buffer count the runtime chooses (MultiStageOptions).
inline constexpr int kAutomaticBuffers = -1;

struct MultiStageOptions {
  int layers_per_stage = 1;
  int zero_stage = 1;  // 1, 2 or 3
  // Weight buffers shared round-robin (stage s uses buffer s mod n), each as
  // large as the largest stage using it; 0: every stage has its own. Needs
  // zero_stage 3. Prefetch needs at least 2. kAutomaticBuffers (the default):
  // 2 under ZeRO-3 when there are more than 2 stages and ranks -- the stage
  // computing and the one prefetched, so a rank holds its shards plus two
  // stages' weights whatever the depth -- and 0 otherwise (at one rank each
  // stage's own buffer is its shard: Note [Shard aliasing] in fsdp.h).
  int shared_weight_buffers = kAutomaticBuffers;
  // Gradient buffers shared round-robin; 0: every stage has its own. Needs
  // zero_stage >= 2. kAutomaticBuffers (the default): 1 under ZeRO-3 with more
  // than one stage (a stage's reduce-scatter ends before the previous stage's
  // backward starts, so one buffer serves them all), 0 otherwise: ZeRO-1 and
  // ZeRO-2 keep a buffer per stage.
  int shared_gradient_buffers = kAutomaticBuffers;
  bool prefetch = false;
  // ZeRO-2/3: each stage's reduce-scatter runs while the previous stage's
  // backward computes (Fsdp::begin_reduce_gradients), finished before the next
  // one starts and before forward_backward returns. Its gradient buffer stays
  // claimed until then, so the automatic shared gradient buffers are 2, not 1.
  // Gradients are bitwise the same as without it.
  bool asynchronous_reduction = false;
  ActivationCheckpointing activation_checkpointing = ActivationCheckpointing::kNone;
  // Host memory: hand the C heap's free pages back to the system
  // (malloc_trim) before each phase that may set a step's peak: the start of
  // the backward, and under checkpointing each stage's recomputation. Note
  // [Heap trim] in multi_stage_model.cpp says why and what it costs. Off: a
  // harness that manages its process's heap itself.
  bool trim_heap = true;
  FsdpOptions fsdp;
};

// The side outputs of every layer's forwards since the last take, on the CPU.
struct AuxiliaryTotals {
  // Sum of the auxiliary losses as they entered the objective (each weighted
  // by forward_backward's auxiliary_weight).
  double loss = 0;
  // Per layer that routes tokens, by its index in the model's layers: tokens
  // per expert, [experts] or [sublayers, experts], summed over the forwards, as double.
  std::vector<std::pair<std::size_t, at::Tensor>> expert_tokens;
};

// The bytes the runtime holds on this rank, each buffer counted once.
struct ModelMemory {
  std::int64_t weight_shards = 0;  // aliased shards (Note [Shard aliasing]) count 0
  std::int64_t gradient_shards = 0;
  std::int64_t optimizer_state = 0;
  std::int64_t weight_buffers = 0;  // own and shared
  std::int64_t gradient_buffers = 0;
  // What the largest stage's gradient reduce-scatter allocates while it runs
  // (Fsdp::reduce_scratch_bytes): float32 copies of 16-bit gradients on a
  // device (NCCL) group; on a host (MPI) group, the float32 staging of a
  // large or 16-bit buffer's pieces and Open MPI's own scratch, as large as
  // the call's input or twice that.
  std::int64_t collective_staging = 0;
  // An estimate of the activations one micro-batch keeps alive at its peak
  // (MultiStageModel::memory with a batch shape; 0 without one). Not in total():
  // the runtime's buffers are exact, this is a model of autograd's.
  std::int64_t activations = 0;
  bool activations_partly_unknown = false;  // some layer gave no estimate
  std::int64_t total() const {
    return weight_shards + gradient_shards + optimizer_state + weight_buffers + gradient_buffers +
           collective_staging;
  }
  // "total 12.0 MiB: weight shards 4.0 MiB, ..." for logs.
  std::string describe() const;
};

class MultiStageModel {
 public:
  using LossFunction = std::function<at::Tensor(const at::Tensor& output)>;

  // Splits `layers` into stages of options.layers_per_stage (the last may be
  // shorter), lays out and shards each stage's parameters, and binds every
  // layer to its views. Throws std::invalid_argument for a bad option or a
  // tied parameter declared with different shapes or dtypes, naming it.
  MultiStageModel(std::vector<std::unique_ptr<Layer>> layers, std::shared_ptr<ProcessGroup> group,
                  MultiStageOptions options);

  // Two index spaces, named apart:
  //  - schedule stages, in forward order: every group of layers_per_stage
  //    layers, including a group whose parameters are all tied (it has no
  //    Fsdp of its own: schedule_stage() throws for it);
  //  - stages(): every Fsdp, the tied stage last and parameter-free groups
  //    skipped -- the list that optimizers, checkpoints and the inspector take.
  std::size_t schedule_stage_count() const { return stages_.size(); }
  Fsdp& schedule_stage(std::size_t index);
  bool schedule_stage_has_parameters(std::size_t index) const {
    return stages_.at(index).fsdp != nullptr;
  }
  // The stage holding the tied parameters, or null.
  Fsdp* tied_stage() { return tied_.get(); }
  // Every Fsdp (tied stage last): what the optimizer and the inspector work on.
  std::vector<Fsdp*> stages();
  // The options in effect: automatic buffer counts replaced by the counts chosen.
  const MultiStageOptions& options() const { return options_; }

  // Deterministic, world-size-independent weights (Fsdp::initialize_weights),
  // then the values of parameters whose layer supplies them (Layer::initial_value).
  void initialize_weights(std::uint64_t seed);

  // Before a step's first micro-batch: zeroes the gradient buffers (ZeRO-1) or
  // the gradient shards (ZeRO-2/3, which accumulate reduced micro-batches).
  void zero_gradients();

  // One micro-batch: forward through every stage, `loss` on the last output,
  // backward through every stage in reverse. The layers' auxiliary losses
  // enter the objective times `auxiliary_weight` (1 / micro-batches when `loss`
  // averages over them). Returns this rank's value of `loss` (without the
  // auxiliary losses, which add up in take_auxiliary_totals()). Collective.
  double forward_backward(const at::Tensor& input, const LossFunction& loss,
                          double auxiliary_weight = 1.0);

  // The auxiliary totals of the training forwards since the last take, and
  // starts new ones. Local to this rank.
  AuxiliaryTotals take_auxiliary_totals();

  // After the micro-batches: leaves the averaged gradients in the gradient
  // shards. Under ZeRO-1 this reduce-scatters the buffers; under ZeRO-2/3 the
  // backward already did, and this does nothing. Collective.
  void reduce_gradients();

  // Forward only, without autograd (inference, evaluation). Collective.
  at::Tensor forward(const at::Tensor& input);

  // Summed over every stage (Fsdp::communication_statistics).
  CommunicationStatistics communication_statistics();
  void reset_communication_statistics();

  // What the runtime holds on this rank; `optimizer` adds its state. With
  // `rows` > 0, `activations` estimates what a forward_backward of
  // [rows, sequence] inputs keeps alive under this checkpointing mode.
  ModelMemory memory(const ShardedAdamW* optimizer = nullptr, std::int64_t rows = 0,
                     std::int64_t sequence = 0) const;

 private:
  struct Stage {
    std::unique_ptr<Fsdp> fsdp;  // null when every parameter of the stage is tied
    std::vector<Layer*> layers;
    std::string first_parameter;  // named in the restored-state assertion
    bool uses_tied = false;
    std::size_t first_layer = 0;  // index of layers.front() in layers_
  };
  // A forward through layers [first, end) of a stage.
  struct SegmentResult {
    at::Tensor output;
    at::Tensor auxiliary_loss;  // sum of the layers' auxiliary losses; undefined: none
  };

  void build_stages(const std::shared_ptr<ProcessGroup>& group);
  // Note [Heap trim]; a no-op where it does not apply.
  void trim_heap() const;
  // Note [Progress in the backward]: hooks `output` (a layer's, in a graph)
  // so that the collectives in flight advance when its gradient is computed.
  void poll_collectives_in_backward(const at::Tensor& output);
  void progress_collectives();
  // ZeRO-2/3's reduction of one stage after its backward: at once, or begun
  // (options_.asynchronous_reduction) after finishing the one in flight.
  void reduce_stage_gradients(Fsdp& fsdp, GradientUpdate update);
  void finish_reduction_in_flight();
  void restore(Stage& stage);
  void prefetch(std::size_t index);
  // `prefetching`: a stage whose restore may be in flight, advanced between
  // layers. `record`: add the layers' side outputs to the auxiliary totals
  // (false for recomputations and inference).
  SegmentResult run_segment(Stage& stage, std::size_t first, std::size_t end,
                            const at::Tensor& input, Fsdp* prefetching, bool record,
                            double auxiliary_weight = 1.0);
  // Adds one part's side outputs to `result` (and, when `record`, to the
  // auxiliary totals); `layer` indexes stage.layers.
  void add_side_outputs(const Stage& stage, std::size_t layer, SideOutputs side, bool record,
                        double auxiliary_weight, SegmentResult& result);
  // The [first, end) layer ranges that checkpointing keeps one input for.
  std::vector<std::pair<std::size_t, std::size_t>> segments(const Stage& stage) const;
  // Checkpointing's backward of segment [first, end) from `input` (its kept
  // input) and `output_gradient`: recomputed and differentiated, then the
  // gradient of `input` returned (undefined when it has none). A segment of
  // one layer goes part by part (Layer::forward_part): a forward without
  // graph through all but the last part keeps each part's input, then each
  // part, last first, runs again with its graph and is differentiated at
  // once, so one part's graph is alive at a time, for one extra forward of
  // all but the last part. A longer segment is recomputed whole: its
  // parts would cost a whole extra forward of the segment.
  at::Tensor recompute_backward(Stage& stage, std::size_t first, std::size_t end,
                                const at::Tensor& input, at::Tensor output_gradient,
                                Fsdp* prefetching, double auxiliary_weight);
  std::int64_t activation_estimate(std::int64_t rows, std::int64_t sequence,
                                   bool& partly_unknown) const;
  Fsdp* prefetch_target(std::size_t index);

  std::vector<std::unique_ptr<Layer>> layers_;
  std::vector<Stage> stages_;
  std::unique_ptr<Fsdp> tied_;
  std::vector<std::shared_ptr<StageBuffer>> shared_weight_buffers_;
  std::vector<std::shared_ptr<StageBuffer>> shared_gradient_buffers_;
  MultiStageOptions options_;
  bool host_memory_ = false;  // the group computes in host memory (Note [Heap trim])
  // ZeRO-2/3: zero_gradients() zeroed the gradient shards and no micro-batch
  // has reduced into them since.
  bool gradient_shards_zero_ = false;
  // The stage whose asynchronous reduce-scatter is in flight, or null.
  Fsdp* reducing_ = nullptr;
  // Since the last take_auxiliary_totals(): the summed auxiliary loss (a
  // tensor on the compute device, read once) and tokens per expert per layer.
  at::Tensor auxiliary_loss_total_;
  std::vector<at::Tensor> expert_tokens_total_;  // indexed like layers_
};

}  // namespace fsdp::stages
