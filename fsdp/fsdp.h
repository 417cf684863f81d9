// The per-stage FSDP object: a stage's sharded weights and gradients.
//
//   weight shard (this rank's slice of every weight, shard dtype, the truth)
//        | restore_parameters(): cast into this rank's slice of the buffer, then all-gather in
//        place
//        v
//   weight buffer (room for all of the stage's weights, compute dtype, zeroed at creation)
//        | views
//        v
//   parameters (one tensor per declared parameter; their .grad() are views of the gradient buffer)
//
// The shard is the truth; the buffer is a cache that is valid only while the
// stage is restored (docs/DESIGN.md, invariants). Reading a parameter before
// restore_parameters() would silently read zeros -- the classic pitfall of
// sharded weight buffers -- so forward-side code goes through parameter() or
// assert_restored(), which fail with the stage and parameter named. To read
// the true values without a restore, use the inspector (fsdp/inspector.h),
// which reads the shards.
//
// Thread-safety: none; a stage is driven by one thread.
// Collectives: restore_parameters(), begin_restore(), reduce_gradients() and
// begin_reduce_gradients() are collective over the stage's group (every rank
// calls them, in the same order).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "fsdp/element_type.h"
#include "fsdp/flat_layout.h"
#include "fsdp/process_group.h"
#include "fsdp/stage_buffer.h"

namespace fsdp {

struct FsdpOptions {
  // The dtype of the weight and gradient shards (the "optimization dtype").
  // Element types are the runtime's one dtype vocabulary at its boundaries;
  // scalar_type_of (fsdp/torch_interop.h) converts where libtorch needs one.
  ElementType shard_dtype = ElementType::kFloat32;
  // The dtype of the weight and gradient buffers, and so of the parameters.
  ElementType compute_dtype = ElementType::kFloat32;
  // Where shards and buffers live: CPU for an MPI group, a CUDA device for NCCL.
  c10::Device device = c10::Device(c10::DeviceType::CPU);
  // Parameter views are autograd leaves whose gradients accumulate into the gradient buffer.
  bool requires_grad = true;
  // Debugging aid: release() fills the weight buffer with NaN, so that a stale
  // view read after release is loud instead of silently old. Gives the stage a
  // separate weight shard (see Note [Shard aliasing]).
  bool poison_released_buffer = false;
  std::int64_t alignment = kDefaultShardAlignment;
};

// Buffers a stage uses but does not own: shared round-robin with other stages
// (fsdp/stages/multi_stage_model.h). Null members mean the stage allocates its own.
// A shared buffer must have at least layout().padded_numel() elements of the
// compute dtype, on the stage's device.
struct SharedStageBuffers {
  std::shared_ptr<StageBuffer> weights;
  std::shared_ptr<StageBuffer> gradients;
};

// What one stage holds on this rank, in bytes (see Fsdp::memory()).
struct StageMemory {
  std::int64_t weight_shard = 0;  // 0 when the shard aliases the buffer (Note [Shard aliasing])
  std::int64_t gradient_shard = 0;
  std::int64_t weight_buffer = 0;    // 0 when shared: its owner counts it
  std::int64_t gradient_buffer = 0;  // 0 when shared
  std::int64_t total() const {
    return weight_shard + gradient_shard + weight_buffer + gradient_buffer;
  }
};

enum class GradientReduction { kAverage, kSum };
enum class GradientUpdate {
  kOverwrite,   // gradient shard = reduced gradient
  kAccumulate,  // gradient shard += reduced gradient
};

// Where a stage's host time went in collectives: what the schedule failed to
// hide behind computation. Host time: with NCCL the host does not block on
// the collectives, so these measure only launch overhead there.
struct CommunicationStatistics {
  std::int64_t restores = 0;             // all-gathers started
  std::int64_t prefetched_restores = 0;  // of which started ahead of use (begin_restore)
  double restore_seconds = 0;            // host time in restore_parameters() (wait included)
  double reduce_seconds = 0;             // host time in reduce_gradients() (both halves)
  double exposed_seconds() const { return restore_seconds + reduce_seconds; }
};

// A parameter read while its stage's weights were not restored throws
// NotRestoredError (fsdp/errors.h).

class Fsdp {
 public:
  // Lays out `parameters` for the group's world size and allocates, on
  // options.device: the weight and gradient shards (layout().shard_numel()
  // elements of shard_dtype, zeroed) and the weight and gradient buffers
  // (layout().padded_numel() elements of compute_dtype, zeroed). Nothing else
  // proportional to the model is allocated.
  // Throws std::invalid_argument for a device that does not match the group's
  // memory, a non-floating dtype, or a bad parameter list (FlatLayout's errors).
  // With shared buffers, only the shards are allocated; the buffers'
  // sizes, dtypes and devices are checked (std::invalid_argument naming both).
  Fsdp(std::string stage_name, std::vector<ParameterSpec> parameters,
       std::shared_ptr<ProcessGroup> group, FsdpOptions options = {},
       SharedStageBuffers shared = {});

  Fsdp(const Fsdp&) = delete;
  Fsdp& operator=(const Fsdp&) = delete;

  const std::string& stage_name() const { return stage_name_; }
  const FlatLayout& layout() const { return layout_; }
  ProcessGroup& group() const { return *group_; }
  const FsdpOptions& options() const { return options_; }

  // This rank's shards: 1-D, layout().shard_numel() elements each. The weight
  // shard is the truth. Whoever writes it (initialiser, loader, optimizer) must
  // call invalidate() afterwards.
  //
  // Note [Shard aliasing]
  // When the shard and compute dtypes are the same, the weight shard is a view
  // of this rank's own slice of the weight buffer rather than separate memory:
  // restore is then the in-place all-gather alone, with no copy (this is how
  // Megatron's distributed optimizer shards fp32 parameters), and the stage
  // holds one buffer's worth of weights instead of a buffer plus a shard. The
  // rest of the buffer is still a cache valid only while restored. What this
  // asks of callers: never write the buffer except through restore (writing a
  // parameter view in place would change the truth for this rank's slice
  // only). A stage whose buffer must be overwritten while released --
  // poison_released_buffer, and a weight buffer shared between stages -- keeps
  // a separate shard. shard_aliases_buffer() says which case holds.
  const at::Tensor& weight_shard() const { return weight_shard_; }
  bool shard_aliases_buffer() const { return shard_aliases_buffer_; }
  // The bytes this stage holds on this rank, counted once each:
  //   shards: shard_numel x sizeof(shard dtype) each (the weight shard is free when aliased)
  //   own buffers: padded_numel x sizeof(compute dtype) each (shared ones count 0 here)
  StageMemory memory() const;
  // What reduce_gradients() allocates while its reduce-scatter runs, beyond
  // the buffer and the shard (ProcessGroup::reduce_scatter_scratch_bytes), for
  // the step's first micro-batch; later ones add a shard-sized temporary.
  std::int64_t reduce_scratch_bytes() const;
  const at::Tensor& gradient_shard() const { return gradient_shard_; }
  // The flat buffers: 1-D, layout().padded_numel() elements each (the start of
  // a shared buffer, which may be larger).
  const at::Tensor& weight_buffer() const { return weight_buffer_; }
  const at::Tensor& gradient_buffer() const { return gradient_buffer_; }
  bool shares_weight_buffer() const { return shares_weight_buffer_; }
  bool shares_gradient_buffer() const { return shares_gradient_buffer_; }

  // Fills this rank's part of every parameter with its declared initial values
  // (ParameterSpec::init, fsdp/initializer.h): element i of parameter p gets a
  // value that depends on (seed, p's name, i) only, so the model is bitwise the
  // same at every world size. Writes the weight shard directly, through a
  // bounded staging chunk; padding stays zero. Local (not collective);
  // invalidates the restored state.
  void initialize_weights(std::uint64_t seed);
  // Writes this rank's part of parameter `name` from `values` (its full
  // declared shape, any floating dtype, on any device) into the weight shard.
  // Local; invalidates. Throws std::invalid_argument naming the parameter and
  // both shapes on a mismatch. For weights that come from elsewhere (an
  // adopted torch::nn module, a checkpoint).
  void load_parameter(std::string_view name, const at::Tensor& values);

  // Makes the buffer hold every rank's weights: casts the weight shard into
  // this rank's slice of the buffer, then all-gathers in place, and waits.
  // Idempotent: does nothing while already restored; finishes a restore that
  // begin_restore() started. Collective.
  void restore_parameters();
  // Starts a restore without waiting for it (prefetch): the all-gather runs
  // while the caller computes, and restore_parameters() finishes it. Claims
  // the weight buffer at once (Note [Buffer ordering]); until the restore is
  // finished the stage is not restored and assert_restored() fails. Does
  // nothing when restored or already started. Collective.
  void begin_restore();
  bool is_restored() const { return restored_; }
  bool restore_in_flight() const { return pending_restore_ != nullptr; }
  // Lets a restore or a gradient reduction in flight advance without waiting for it (an MPI
  // collective moves only while its rank is inside MPI; Note [MPI progress]).
  // Cheap; never blocks on peers. Call it from the computation it overlaps.
  void progress();
  // Whether begin_restore() could claim the weight buffer now (a shared
  // buffer may still be held by another stage).
  bool may_begin_restore() const;
  // Marks the buffer as no longer holding the weights and gives it up for
  // other stages (ZeRO-3). Waits for a restore in flight first: a collective
  // cannot be cancelled.
  void release();
  // The weight shard is about to change or has changed: the buffer is stale
  // until the next restore. Like release(), waits for a restore in flight --
  // call it *before* writing the shard, which an in-flight all-gather may be
  // reading (Note [Shard aliasing]).
  void invalidate();

  // Throws NotRestoredError naming this stage and `parameter_name` unless restored.
  void assert_restored(std::string_view parameter_name) const;
  // The parameter's view of the weight buffer, in its declared shape.
  // Asserts the stage is restored first (assert_restored).
  at::Tensor parameter(std::string_view name) const;
  // Every parameter's view, in layout order, without the check: for binding
  // layers once. Whoever reads them must call assert_restored() first.
  const std::vector<at::Tensor>& parameter_views() const { return parameter_views_; }

  // Claims the gradient buffer (Note [Buffer ordering]) and sets it to zero:
  // call before a backward pass that accumulates into it.
  void zero_gradient_buffer();
  // Sets the gradient shard to zero (before accumulating reduced micro-batches into it).
  void zero_gradient_shard();
  // Reduce-scatters the gradient buffer into the gradient shard: each rank
  // receives the sum (or average) over ranks of its own range, reduced in
  // float32 when the buffer is 16-bit. Collective. Leaves the gradient buffer
  // as it is, and gives it up: a shared gradient buffer may then be claimed by
  // another stage. Throws std::logic_error when a shared gradient buffer is
  // held by another stage (these gradients were overwritten).
  void reduce_gradients(GradientReduction reduction = GradientReduction::kAverage,
                        GradientUpdate update = GradientUpdate::kOverwrite);
  // reduce_gradients() in two halves, so that the reduce-scatter runs while
  // the caller computes (the previous stage's backward): begin starts it and
  // keeps the gradient buffer claimed -- the collective still reads it -- and
  // finish waits for it, adds an accumulated result into the shard, and gives
  // the buffer up. Until finished, the gradient shard does not hold the
  // result: everything that reads or writes the shard or the buffer here
  // (zero_gradient_buffer, zero_gradient_shard, a second begin) finishes it
  // first. progress() advances it. finish does nothing when none is in
  // flight. Collective (begin); the same errors as reduce_gradients().
  void begin_reduce_gradients(GradientReduction reduction = GradientReduction::kAverage,
                              GradientUpdate update = GradientUpdate::kOverwrite);
  void finish_reduce_gradients();
  bool reduce_in_flight() const { return pending_reduce_ != nullptr; }
  // Whether zero_gradient_buffer() could claim the gradient buffer now (a
  // shared buffer may be held by another stage, or by its reduction in flight).
  bool may_claim_gradient_buffer() const;

  const CommunicationStatistics& communication_statistics() const { return statistics_; }
  void reset_communication_statistics() { statistics_ = {}; }

 private:
  std::string stage_name_;
  FlatLayout layout_;
  std::shared_ptr<ProcessGroup> group_;
  FsdpOptions options_;
  at::Tensor weight_shard_;
  at::Tensor gradient_shard_;
  std::shared_ptr<StageBuffer> weight_storage_;
  std::shared_ptr<StageBuffer> gradient_storage_;
  at::Tensor weight_buffer_;    // the first padded_numel elements of weight_storage_
  at::Tensor gradient_buffer_;  // of gradient_storage_
  std::vector<at::Tensor> parameter_views_;
  ProcessGroup::Work pending_restore_;  // the all-gather begin_restore() started
  // The reduce-scatter begin_reduce_gradients() started; its float32 or
  // accumulation temporary (undefined when it writes the shard directly),
  // how the result enters the shard, and its host time so far.
  at::Tensor pending_reduce_output_;  // declared first: the work, destroyed first, waits
  ProcessGroup::Work pending_reduce_;
  GradientUpdate pending_reduce_update_ = GradientUpdate::kOverwrite;
  double pending_reduce_seconds_ = 0;
  bool shares_weight_buffer_ = false;
  bool shares_gradient_buffer_ = false;
  bool shard_aliases_buffer_ = false;
  bool restored_ = false;
  CommunicationStatistics statistics_;

  void finish_pending_restore();
};

}  // namespace fsdp
