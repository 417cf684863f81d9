#include "fsdp/stages/multi_stage_model.h"

#include <ATen/ATen.h>
#include <torch/csrc/autograd/autograd.h>

#include <algorithm>
#include <cstdio>
#include <map>
#include <stdexcept>
#include <utility>

#include "fsdp/host_allocator.h"
#include "fsdp/stages/sharded_adamw.h"

namespace fsdp::stages {
namespace {

std::string shape_text(const std::vector<std::int64_t>& shape) {
  return c10::str(c10::IntArrayRef(shape));
}

void check_options(const MultiStageOptions& options) {
  auto fail = [](const std::string& message) { throw std::invalid_argument(message); };
  if (options.layers_per_stage < 1) {
    fail("layers_per_stage must be at least 1, got " + std::to_string(options.layers_per_stage));
  }
  if (options.zero_stage < 1 || options.zero_stage > 3) {
    fail("zero_stage must be 1, 2 or 3, got " + std::to_string(options.zero_stage));
  }
  if (options.shared_weight_buffers < kAutomaticBuffers ||
      options.shared_gradient_buffers < kAutomaticBuffers) {
    fail(
        "the number of shared buffers cannot be negative (kAutomaticBuffers lets the runtime "
        "choose)");
  }
  if (options.shared_weight_buffers > 0 && options.zero_stage != 3) {
    fail("shared_weight_buffers = " + std::to_string(options.shared_weight_buffers) +
         " needs zero_stage 3 (ZeRO-" + std::to_string(options.zero_stage) +
         " keeps every stage's weights restored through the backward)");
  }
  if (options.asynchronous_reduction && options.zero_stage < 2) {
    fail("asynchronous_reduction needs zero_stage 2 or 3 (ZeRO-" +
         std::to_string(options.zero_stage) +
         " reduces once, after the backward, with no backward left to overlap)");
  }
  if (options.shared_gradient_buffers > 0 && options.zero_stage < 2) {
    fail("shared_gradient_buffers = " + std::to_string(options.shared_gradient_buffers) +
         " needs zero_stage 2 or 3 (ZeRO-1 keeps every stage's gradients until the step ends)");
  }
}

// Replaces automatic buffer counts (kAutomaticBuffers) with the chosen ones.
MultiStageOptions with_buffer_counts(MultiStageOptions options, std::size_t layer_count,
                                     int world_size) {
  const std::size_t per_stage = static_cast<std::size_t>(options.layers_per_stage);
  const std::size_t stage_count = (layer_count + per_stage - 1) / per_stage;
  const bool zero3 = options.zero_stage == 3;
  if (options.shared_weight_buffers == kAutomaticBuffers) {
    // With 2 stages or fewer, sharing saves nothing and costs the shard
    // aliasing (Note [Shard aliasing]). So it does at one rank, where a
    // stage's shard is the whole stage: its own buffer is its shard, and
    // restoring it copies nothing.
    options.shared_weight_buffers = zero3 && stage_count > 2 && world_size > 1 ? 2 : 0;
  }
  if (options.shared_gradient_buffers == kAutomaticBuffers) {
    // One serves every stage when each reduction ends before the previous
    // stage's backward; an asynchronous one still reads its buffer then, so
    // the previous stage needs the other.
    const int needed = options.asynchronous_reduction ? 2 : 1;
    options.shared_gradient_buffers =
        zero3 && stage_count > static_cast<std::size_t>(needed) ? needed : 0;
  }
  return options;
}

std::string mebibytes(std::int64_t bytes) {
  char text[32];
  std::snprintf(text, sizeof text, "%.1f MiB", static_cast<double>(bytes) / (1 << 20));
  return text;
}

// Backward from a segment's output (with `output_gradient`) and from its
// auxiliary loss (weighted); nothing when neither carries a gradient.
void backward_segment(const at::Tensor& output, const at::Tensor& output_gradient,
                      const at::Tensor& auxiliary_loss, double auxiliary_weight) {
  std::vector<at::Tensor> roots;
  std::vector<at::Tensor> gradients;
  if (output_gradient.defined() && output.requires_grad()) {
    roots.push_back(output);
    gradients.push_back(output_gradient);
  }
  if (auxiliary_loss.defined() && auxiliary_loss.requires_grad()) {
    roots.push_back(auxiliary_loss);
    gradients.push_back(at::full_like(auxiliary_loss, auxiliary_weight));
  }
  if (!roots.empty()) torch::autograd::backward(roots, gradients);
}

// A recomputed segment's input: a leaf whose gradient the backward fills in
// (only floating-point activations have one; token ids do not).
at::Tensor recompute_leaf(const at::Tensor& input) {
  if (!input.is_floating_point() || input.requires_grad()) return input;
  return input.detach().requires_grad_(true);
}

}  // namespace

const char* activation_checkpointing_name(ActivationCheckpointing mode) {
  switch (mode) {
    case ActivationCheckpointing::kNone:
      return "none";
    case ActivationCheckpointing::kStages:
      return "stages";
    case ActivationCheckpointing::kLayers:
      return "layers";
  }
  return "?";
}

ActivationCheckpointing parse_activation_checkpointing(const std::string& name) {
  for (auto mode : {ActivationCheckpointing::kNone, ActivationCheckpointing::kStages,
                    ActivationCheckpointing::kLayers}) {
    if (name == activation_checkpointing_name(mode)) return mode;
  }
  throw std::invalid_argument("activation checkpointing '" + name +
                              "' (expected none, stages or layers)");
}

std::string ModelMemory::describe() const {
  // Aliased shards live inside their buffers (Note [Shard aliasing]): say so
  // rather than print a bare 0 that reads like a missing model.
  const std::string shards = weight_shards == 0 && weight_buffers > 0
                                 ? std::string("inside the weight buffers")
                                 : mebibytes(weight_shards);
  std::string text = "total " + mebibytes(total()) + ": weight shards " + shards +
                     ", gradient shards " + mebibytes(gradient_shards) + ", optimizer state " +
                     mebibytes(optimizer_state) + ", weight buffers " + mebibytes(weight_buffers) +
                     ", gradient buffers " + mebibytes(gradient_buffers);
  if (collective_staging > 0) text += ", collective staging " + mebibytes(collective_staging);
  if (activations > 0 || activations_partly_unknown) {
    text += "; activations about " + mebibytes(activations) + " per micro-batch (estimate" +
            (activations_partly_unknown ? ", some layers not counted)" : ")");
  }
  return text;
}

MultiStageModel::MultiStageModel(std::vector<std::unique_ptr<Layer>> layers,
                                 std::shared_ptr<ProcessGroup> group, MultiStageOptions options)
    : layers_(std::move(layers)), options_(options) {
  check_options(options_);
  if (layers_.empty()) throw std::invalid_argument("a model needs at least one layer");
  if (!group) throw std::invalid_argument("multi-stage model: no process group given");
  options_ = with_buffer_counts(options_, layers_.size(), group->size());
  host_memory_ = group->memory_location() == MemoryLocation::kHost;
  build_stages(group);
}

void MultiStageModel::build_stages(const std::shared_ptr<ProcessGroup>& group) {
  // Every layer's declarations; a name declared by more than one layer is tied.
  std::vector<std::vector<ParameterSpec>> declared(layers_.size());
  std::map<std::string, std::pair<std::size_t, int>> first_declaration;  // layer, uses
  std::vector<ParameterSpec> tied_specs;
  for (std::size_t l = 0; l < layers_.size(); ++l) {
    declared[l] = layers_[l]->parameter_specs();
    for (const ParameterSpec& spec : declared[l]) {
      auto [entry, inserted] = first_declaration.try_emplace(spec.name, l, 0);
      if (++entry->second.second != 2) continue;
      const ParameterSpec& first =
          *std::find_if(declared[entry->second.first].begin(), declared[entry->second.first].end(),
                        [&](const ParameterSpec& other) { return other.name == spec.name; });
      if (first.shape != spec.shape || first.dtype != spec.dtype) {
        throw std::invalid_argument(
            "tied parameter '" + spec.name + "' is declared by layer " +
            std::to_string(entry->second.first) + " as " + shape_text(first.shape) + " " +
            std::string(element_type_name(first.dtype)) + " and by layer " + std::to_string(l) +
            " as " + shape_text(spec.shape) + " " + std::string(element_type_name(spec.dtype)) +
            ": layers that share a parameter must declare the same shape and dtype");
      }
      tied_specs.push_back(first);  // the first declaration's initialiser wins
    }
  }
  auto is_tied = [&](const std::string& name) { return first_declaration.at(name).second > 1; };
  if (!tied_specs.empty()) {
    tied_ = std::make_unique<Fsdp>("stage.tied", tied_specs, group, options_.fsdp);
  }

  // Group the layers into stages and collect each stage's own parameters.
  const auto per_stage = static_cast<std::size_t>(options_.layers_per_stage);
  std::vector<std::vector<ParameterSpec>> stage_specs;
  for (std::size_t first = 0; first < layers_.size(); first += per_stage) {
    Stage stage;
    std::vector<ParameterSpec> specs;
    stage.first_layer = first;
    for (std::size_t l = first; l < std::min(layers_.size(), first + per_stage); ++l) {
      stage.layers.push_back(layers_[l].get());
      for (const ParameterSpec& spec : declared[l]) {
        if (is_tied(spec.name)) {
          stage.uses_tied = true;
        } else {
          specs.push_back(spec);
        }
      }
    }
    // Named in the restored-state assertion; a stage of parameter-free
    // layers (activations, reshapes) has nothing to assert.
    if (!specs.empty()) {
      stage.first_parameter = specs.front().name;
    } else if (!tied_specs.empty()) {
      stage.first_parameter = tied_specs.front().name;
    }
    stages_.push_back(std::move(stage));
    stage_specs.push_back(std::move(specs));
  }

  // Shared buffers, each as large as the largest stage that uses it.
  auto make_shared = [&](int count, const char* kind) {
    std::vector<std::int64_t> sizes(static_cast<std::size_t>(count), 0);
    for (std::size_t s = 0; s < stage_specs.size(); ++s) {
      if (stage_specs[s].empty()) continue;
      const FlatLayout layout(stage_specs[s], group->size(), options_.fsdp.alignment);
      std::int64_t& size = sizes[s % sizes.size()];
      size = std::max(size, layout.padded_numel());
    }
    std::vector<std::shared_ptr<StageBuffer>> buffers;
    for (std::size_t k = 0; k < sizes.size(); ++k) {
      buffers.push_back(std::make_shared<StageBuffer>(
          "shared " + std::string(kind) + " buffer " + std::to_string(k), sizes[k],
          options_.fsdp.compute_dtype, options_.fsdp.device));
    }
    return buffers;
  };
  if (options_.shared_weight_buffers > 0) {
    shared_weight_buffers_ = make_shared(options_.shared_weight_buffers, "weight");
  }
  if (options_.shared_gradient_buffers > 0) {
    shared_gradient_buffers_ = make_shared(options_.shared_gradient_buffers, "gradient");
  }

  for (std::size_t s = 0; s < stages_.size(); ++s) {
    Stage& stage = stages_[s];
    if (!stage_specs[s].empty()) {
      SharedStageBuffers shared;
      if (!shared_weight_buffers_.empty()) {
        shared.weights = shared_weight_buffers_[s % shared_weight_buffers_.size()];
      }
      if (!shared_gradient_buffers_.empty()) {
        shared.gradients = shared_gradient_buffers_[s % shared_gradient_buffers_.size()];
      }
      stage.fsdp = std::make_unique<Fsdp>("stage." + std::to_string(s), stage_specs[s], group,
                                          options_.fsdp, shared);
    }
    // Bind each layer to its views: own parameters in layout (= declaration)
    // order, tied ones by name.
    std::size_t next_own = 0;
    for (Layer* layer : stage.layers) {
      std::vector<at::Tensor> views;
      for (const ParameterSpec& spec : layer->parameter_specs()) {
        if (is_tied(spec.name)) {
          views.push_back(tied_->parameter_views()[tied_->layout().parameter_index(spec.name)]);
        } else {
          views.push_back(stage.fsdp->parameter_views()[next_own++]);
        }
      }
      layer->bind(std::move(views));
    }
  }
}

Fsdp& MultiStageModel::schedule_stage(std::size_t index) {
  Stage& stage = stages_.at(index);
  if (!stage.fsdp) {
    throw std::out_of_range("schedule stage " + std::to_string(index) +
                            " has no parameters of its own (they are all tied)");
  }
  return *stage.fsdp;
}

std::vector<Fsdp*> MultiStageModel::stages() {
  std::vector<Fsdp*> result;
  for (Stage& stage : stages_) {
    if (stage.fsdp) result.push_back(stage.fsdp.get());
  }
  if (tied_) result.push_back(tied_.get());
  return result;
}

void MultiStageModel::initialize_weights(std::uint64_t seed) {
  // Gather the layers' own values first: a layer that can no longer supply
  // them throws here, before any shard has been overwritten.
  struct Supplied {
    Fsdp* owner;
    std::string name;
    at::Tensor values;
  };
  std::vector<Supplied> supplied;
  for (Stage& stage : stages_) {
    for (Layer* layer : stage.layers) {
      const std::vector<ParameterSpec> specs = layer->parameter_specs();
      for (std::size_t i = 0; i < specs.size(); ++i) {
        at::Tensor values = layer->initial_value(i);
        if (!values.defined()) continue;
        Fsdp* owner =
            tied_ && tied_->layout().contains(specs[i].name) ? tied_.get() : stage.fsdp.get();
        supplied.push_back({owner, specs[i].name, std::move(values)});
      }
    }
  }
  for (Fsdp* fsdp : stages()) fsdp->initialize_weights(seed);
  for (const Supplied& entry : supplied) entry.owner->load_parameter(entry.name, entry.values);
  supplied.clear();
  for (Stage& stage : stages_) {
    for (Layer* layer : stage.layers) layer->release_initial_values();
  }
}

void MultiStageModel::zero_gradients() {
  for (Fsdp* fsdp : stages()) {
    if (options_.zero_stage == 1) {
      fsdp->zero_gradient_buffer();
    } else {
      fsdp->zero_gradient_shard();
    }
  }
  gradient_shards_zero_ = options_.zero_stage >= 2;
}

void MultiStageModel::restore(Stage& stage) {
  if (stage.fsdp) {
    stage.fsdp->restore_parameters();
    // The forward asserts the restored state: never compute on the zeros of an
    // unrestored buffer (docs/DESIGN.md, "The shape").
    stage.fsdp->assert_restored(stage.first_parameter);
  }
  if (stage.uses_tied) tied_->assert_restored(tied_->layout().parameters().front().name);
}

void MultiStageModel::prefetch(std::size_t index) {
  if (!options_.prefetch || index >= stages_.size()) return;
  Fsdp* fsdp = stages_[index].fsdp.get();
  // Every rank takes the same decision: it depends on the schedule only.
  if (fsdp != nullptr && fsdp->may_begin_restore()) fsdp->begin_restore();
}

MultiStageModel::SegmentResult MultiStageModel::run_segment(Stage& stage, std::size_t first,
                                                            std::size_t end,
                                                            const at::Tensor& input,
                                                            Fsdp* prefetching, bool record,
                                                            double auxiliary_weight) {
  SegmentResult result;
  result.output = input;
  for (std::size_t l = first; l < end; ++l) {
    Layer* layer = stage.layers[l];
    // Part by part (Layer::forward_part computes what forward does, bitwise):
    // a decoder block's backward then has a point between its two halves
    // where the collectives in flight can advance.
    const std::size_t parts = layer->forward_parts();
    for (std::size_t p = 0; p < parts; ++p) {
      result.output =
          parts == 1 ? layer->forward(result.output) : layer->forward_part(p, result.output);
      add_side_outputs(stage, l, layer->take_side_outputs(), record, auxiliary_weight, result);
      // Let the next stage's all-gather advance (Note [MPI progress]).
      if (prefetching != nullptr) prefetching->progress();
      if (l + 1 < end || p + 1 < parts) poll_collectives_in_backward(result.output);
    }
  }
  return result;
}

void MultiStageModel::add_side_outputs(const Stage& stage, std::size_t layer, SideOutputs side,
                                       bool record, double auxiliary_weight,
                                       SegmentResult& result) {
  if (side.auxiliary_loss.defined()) {
    result.auxiliary_loss = result.auxiliary_loss.defined()
                                ? result.auxiliary_loss + side.auxiliary_loss
                                : side.auxiliary_loss;
    if (record) {
      const at::Tensor weighted = side.auxiliary_loss.detach() * auxiliary_weight;
      auxiliary_loss_total_ =
          auxiliary_loss_total_.defined() ? auxiliary_loss_total_ + weighted : weighted;
    }
  }
  if (record && side.expert_tokens.defined()) {
    // Added up where they were computed: no device-to-host copy per layer.
    at::Tensor& total = expert_tokens_total_.at(stage.first_layer + layer);
    total = total.defined() ? total + side.expert_tokens.detach() : side.expert_tokens.detach();
  }
}

// Note [Heap trim]
// ~~~~~~~~~~~~~~~~
// On the CPU, tensors below glibc's mmap threshold (which rises to 32 MiB
// once such a block has been freed) live in the heap, and a step frees them
// in another order than it took them: the holes stay resident, a fifth of a
// step's peak on the 118 M model (docs/PERFORMANCE.md). malloc_trim(0)
// returns the free pages anywhere in the heap (MADV_DONTNEED), at the price
// of page faults when they are used again. So it runs where it pays: before
// the backward (without checkpointing the peak comes at its start, the
// forward's temporaries are holes by then), and, under checkpointing, before
// each stage's recomputation, where that mode's peaks are. Measured there:
// peak resident set -3% without checkpointing at no cost in tokens/s, -5%
// with it for 4-10% of tokens/s (single runs and the interleaved bench
// disagree). Before every stage without checkpointing it cost 21%: the
// freed activations are faulted in again by the next forward. Device groups
// skip it: their tensors are not in the heap. Under tcmalloc, which
// fsdp-train links (Note [Host allocator]), there are no such holes and
// trim_host_heap() does nothing.
void MultiStageModel::trim_heap() const {
  if (options_.trim_heap && host_memory_) trim_host_heap();
}

at::Tensor MultiStageModel::recompute_backward(Stage& stage, std::size_t first, std::size_t end,
                                               const at::Tensor& input, at::Tensor output_gradient,
                                               Fsdp* prefetching, double auxiliary_weight) {
  if (end - first != 1 || stage.layers[first]->forward_parts() == 1) {
    const at::Tensor leaf = recompute_leaf(input);
    const SegmentResult again = run_segment(stage, first, end, leaf, prefetching, /*record=*/false);
    backward_segment(again.output, output_gradient, again.auxiliary_loss, auxiliary_weight);
    return leaf.requires_grad() ? leaf.grad() : at::Tensor();
  }
  Layer* layer = stage.layers[first];
  const std::size_t parts = layer->forward_parts();
  std::vector<at::Tensor> part_inputs{input};
  {
    at::NoGradGuard no_graph;
    for (std::size_t p = 0; p + 1 < parts; ++p) {
      part_inputs.push_back(layer->forward_part(p, part_inputs.back()));
      (void)layer->take_side_outputs();  // the first forward counted them
      if (prefetching != nullptr) prefetching->progress();
    }
  }
  at::Tensor gradient = std::move(output_gradient);
  for (std::size_t p = parts; p-- > 0;) {
    const at::Tensor leaf = recompute_leaf(part_inputs[p]);
    const at::Tensor output = layer->forward_part(p, leaf);
    const SideOutputs side = layer->take_side_outputs();
    backward_segment(output, gradient, side.auxiliary_loss, auxiliary_weight);
    gradient = leaf.requires_grad() ? leaf.grad() : at::Tensor();
    part_inputs[p] = at::Tensor();
    progress_collectives();  // the prefetch, an asynchronous reduction
  }
  return gradient;
}

// Note [Progress in the backward]
// ~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~
// A stage's backward is one call into autograd, during which the schedule
// cannot poll: a prefetched all-gather (of the stage before) or an
// asynchronous reduce-scatter (of the stage after) would advance on a host
// group only when it is waited for (Note [MPI progress]). So the output of
// each layer part (Layer::forward_part: a decoder block's attention, its
// MLP), but a segment's last, gets a gradient hook that lets the collectives
// in flight advance: it runs between two parts' backwards. The hook reads
// nothing and returns nothing, so gradients are unchanged.
void MultiStageModel::poll_collectives_in_backward(const at::Tensor& output) {
  if (!(options_.prefetch || options_.asynchronous_reduction)) return;
  if (!at::GradMode::is_enabled() || !output.requires_grad()) return;
  output.register_hook([this](const at::Tensor&) { progress_collectives(); });
}

void MultiStageModel::progress_collectives() {
  for (Stage& stage : stages_) {
    if (stage.fsdp) stage.fsdp->progress();
  }
  if (tied_) tied_->progress();
}

void MultiStageModel::reduce_stage_gradients(Fsdp& fsdp, GradientUpdate update) {
  if (!options_.asynchronous_reduction) {
    fsdp.reduce_gradients(GradientReduction::kAverage, update);
    return;
  }
  // One reduction in flight at a time, each overlapping the next stage's
  // backward: two gradient buffers then serve every stage.
  finish_reduction_in_flight();
  fsdp.begin_reduce_gradients(GradientReduction::kAverage, update);
  reducing_ = &fsdp;
}

void MultiStageModel::finish_reduction_in_flight() {
  if (reducing_ != nullptr) std::exchange(reducing_, nullptr)->finish_reduce_gradients();
}

std::vector<std::pair<std::size_t, std::size_t>> MultiStageModel::segments(
    const Stage& stage) const {
  const std::size_t count = stage.layers.size();
  if (options_.activation_checkpointing != ActivationCheckpointing::kLayers) return {{0, count}};
  std::vector<std::pair<std::size_t, std::size_t>> result;
  for (std::size_t l = 0; l < count; ++l) result.emplace_back(l, l + 1);
  return result;
}

AuxiliaryTotals MultiStageModel::take_auxiliary_totals() {
  AuxiliaryTotals totals;
  if (auxiliary_loss_total_.defined()) totals.loss = auxiliary_loss_total_.item<double>();
  auxiliary_loss_total_ = at::Tensor();
  for (std::size_t l = 0; l < expert_tokens_total_.size(); ++l) {
    if (expert_tokens_total_[l].defined()) {
      totals.expert_tokens.emplace_back(l, expert_tokens_total_[l].to(at::kCPU, at::kDouble));
      expert_tokens_total_[l] = at::Tensor();
    }
  }
  return totals;
}

Fsdp* MultiStageModel::prefetch_target(std::size_t index) {
  if (!options_.prefetch || index >= stages_.size()) return nullptr;
  return stages_[index].fsdp.get();
}

double MultiStageModel::forward_backward(const at::Tensor& input, const LossFunction& loss,
                                         double auxiliary_weight) {
  const bool zero3 = options_.zero_stage == 3;
  const bool reduce_in_backward = options_.zero_stage >= 2;
  const bool recompute = options_.activation_checkpointing != ActivationCheckpointing::kNone;
  const std::size_t count = stages_.size();
  if (expert_tokens_total_.empty()) expert_tokens_total_.resize(layers_.size());
  if (tied_) {
    tied_->restore_parameters();
    if (reduce_in_backward) tied_->zero_gradient_buffer();
  }
  // Reduced gradients add up in the shards over micro-batches; into shards
  // still zero (the step's first micro-batch) the reduce-scatter writes
  // directly -- the same values, without a shard-sized temporary and an add.
  const GradientUpdate update = std::exchange(gradient_shards_zero_, false)
                                    ? GradientUpdate::kOverwrite
                                    : GradientUpdate::kAccumulate;
  // Per stage: its input, its output, and either the graph (no
  // checkpointing: output and auxiliary loss hold it) or the inputs of the
  // segments to recompute.
  struct StagePass {
    at::Tensor input;
    SegmentResult result;
    std::vector<at::Tensor> segment_inputs;
    at::Tensor final_leaf;  // checkpointing, last stage: the final segment's input
  };
  std::vector<StagePass> passes(count);
  for (std::size_t s = 0; s < count; ++s) {
    restore(stages_[s]);
    prefetch(s + 1);
    StagePass& pass = passes[s];
    // Stage boundaries: the next stage starts from a detached leaf, whose
    // gradient after that stage's backward is this stage's output gradient.
    pass.input = s == 0 ? input : passes[s - 1].result.output.detach().requires_grad_(true);
    if (!recompute) {
      pass.result = run_segment(stages_[s], 0, stages_[s].layers.size(), pass.input,
                                prefetch_target(s + 1), /*record=*/true, auxiliary_weight);
    } else {
      const auto ranges = segments(stages_[s]);
      at::Tensor activation = pass.input;
      for (std::size_t k = 0; k < ranges.size(); ++k) {
        if (s + 1 == count && k + 1 == ranges.size()) {
          // The final segment keeps its graph: its backward follows the
          // loss at once, so running it again would only cost time.
          pass.final_leaf = k == 0 ? pass.input : recompute_leaf(activation);
          pass.result = run_segment(stages_[s], ranges[k].first, ranges[k].second, pass.final_leaf,
                                    nullptr, /*record=*/true, auxiliary_weight);
          break;
        }
        at::NoGradGuard no_graph;
        pass.segment_inputs.push_back(activation);
        activation = run_segment(stages_[s], ranges[k].first, ranges[k].second, activation,
                                 prefetch_target(s + 1), /*record=*/true, auxiliary_weight)
                         .output;
      }
      if (s + 1 < count) pass.result.output = activation;
    }
    // The last stage stays restored: its backward comes next.
    if (zero3 && s + 1 < count && stages_[s].fsdp) stages_[s].fsdp->release();
  }
  const at::Tensor loss_value = loss(passes.back().result.output);
  const double loss_result = loss_value.item<double>();
  // The loss's graph keeps what its backward needs; the output itself (the
  // logits: tokens x vocabulary) need not stay alive through that backward.
  passes.back().result.output = at::Tensor();
  for (std::size_t s = count; s-- > 0;) {
    Stage& stage = stages_[s];
    StagePass& pass = passes[s];
    if (recompute || s + 1 == count) trim_heap();  // Note [Heap trim]
    restore(stage);                                // ZeRO-3: again; otherwise it still is
    if (s > 0) prefetch(s - 1);
    if (reduce_in_backward && stage.fsdp) {
      // A reduction in flight may still read the buffer this stage shares.
      if (!stage.fsdp->may_claim_gradient_buffer()) finish_reduction_in_flight();
      stage.fsdp->zero_gradient_buffer();
    }
    const bool last = s + 1 == count;
    if (last) {
      backward_segment(loss_value, at::ones_like(loss_value), pass.result.auxiliary_loss,
                       auxiliary_weight);
    } else if (!recompute) {
      backward_segment(pass.result.output, passes[s + 1].input.grad(), pass.result.auxiliary_loss,
                       auxiliary_weight);
    }
    if (recompute) {
      // The segments before (the last stage's final segment is done above),
      // last first, each run again with autograd and differentiated at once.
      at::Tensor gradient = !last                             ? passes[s + 1].input.grad()
                            : pass.final_leaf.requires_grad() ? pass.final_leaf.grad()
                                                              : at::Tensor();
      const auto ranges = segments(stage);
      for (std::size_t k = pass.segment_inputs.size(); k-- > 0;) {
        // The first segment's input is the stage's leaf, whose gradient the
        // stage before reads.
        const at::Tensor input = k == 0 ? pass.input : pass.segment_inputs[k];
        gradient =
            recompute_backward(stage, ranges[k].first, ranges[k].second, input, std::move(gradient),
                               s > 0 ? prefetch_target(s - 1) : nullptr, auxiliary_weight);
        pass.segment_inputs[k] = at::Tensor();
      }
    }
    // This stage's graph is spent: free it before the next stage recomputes.
    pass.result = SegmentResult();
    pass.final_leaf = at::Tensor();
    if (s + 1 < count) passes[s + 1].input = at::Tensor();
    if (stage.fsdp) {
      if (reduce_in_backward) reduce_stage_gradients(*stage.fsdp, update);
      if (zero3) stage.fsdp->release();
    }
  }
  if (tied_) {
    if (reduce_in_backward) reduce_stage_gradients(*tied_, update);
    if (zero3) tied_->release();
  }
  // The gradient shards hold every reduction when the micro-batch returns.
  finish_reduction_in_flight();
  return loss_result;
}

void MultiStageModel::reduce_gradients() {
  if (options_.zero_stage >= 2) return;  // done stage by stage in the backward
  for (Fsdp* fsdp : stages()) fsdp->reduce_gradients(GradientReduction::kAverage);
}

at::Tensor MultiStageModel::forward(const at::Tensor& input) {
  at::NoGradGuard no_grad;
  const bool zero3 = options_.zero_stage == 3;
  if (tied_) tied_->restore_parameters();
  at::Tensor activation = input;
  for (std::size_t s = 0; s < stages_.size(); ++s) {
    restore(stages_[s]);
    prefetch(s + 1);
    activation = run_segment(stages_[s], 0, stages_[s].layers.size(), activation,
                             prefetch_target(s + 1), /*record=*/false)
                     .output;
    if (zero3 && stages_[s].fsdp) stages_[s].fsdp->release();
  }
  if (zero3 && tied_) tied_->release();
  return activation;
}

CommunicationStatistics MultiStageModel::communication_statistics() {
  CommunicationStatistics total;
  for (Fsdp* fsdp : stages()) {
    const CommunicationStatistics& stage = fsdp->communication_statistics();
    total.restores += stage.restores;
    total.prefetched_restores += stage.prefetched_restores;
    total.restore_seconds += stage.restore_seconds;
    total.reduce_seconds += stage.reduce_seconds;
  }
  return total;
}

void MultiStageModel::reset_communication_statistics() {
  for (Fsdp* fsdp : stages()) fsdp->reset_communication_statistics();
}

std::int64_t MultiStageModel::activation_estimate(std::int64_t rows, std::int64_t sequence,
                                                  bool& partly_unknown) const {
  const std::int64_t element_bytes = element_size(options_.fsdp.compute_dtype);
  std::vector<ActivationBytes> bytes;
  for (const auto& layer : layers_) {
    bytes.push_back(layer->activation_bytes(rows, sequence, element_bytes));
    if (bytes.back().saved == 0 && bytes.back().output == 0) partly_unknown = true;
  }
  // The loss keeps the last output and its gradient.
  const std::int64_t loss = 2 * bytes.back().output;
  std::int64_t kept = 0;     // alive from forward to backward
  std::int64_t working = 0;  // under checkpointing: the largest graph alive at once
  for (const Stage& stage : stages_) {
    for (const auto& [first, end] : segments(stage)) {
      std::int64_t graph = 0;
      for (std::size_t l = first; l < end; ++l) graph += bytes[stage.first_layer + l].saved;
      if (options_.activation_checkpointing == ActivationCheckpointing::kNone) {
        kept += graph;
      } else {
        // The segment's input: the previous layer's output.
        const std::size_t before = stage.first_layer + first;
        if (before > 0) kept += bytes[before - 1].output;
        // A segment of one layer is recomputed part by part (recompute_backward),
        // keeping every part's input meanwhile (the first is counted above).
        const ActivationBytes& only = bytes[stage.first_layer + first];
        if (end - first == 1 && only.largest_part > 0) {
          const auto parts =
              static_cast<std::int64_t>(layers_[stage.first_layer + first]->forward_parts());
          graph = only.largest_part + std::max<std::int64_t>(parts - 1, 1) * only.output;
        }
        working = std::max(working, graph);
      }
    }
  }
  // The backward of the largest graph holds gradients of about its size as
  // well (measured: docs/PERFORMANCE.md).
  std::int64_t largest = working;
  if (options_.activation_checkpointing == ActivationCheckpointing::kNone) {
    for (const ActivationBytes& layer : bytes) {
      largest = std::max(largest, layer.backward_window > 0 ? layer.backward_window : layer.saved);
    }
  }
  return kept + working + largest + loss;
}

ModelMemory MultiStageModel::memory(const ShardedAdamW* optimizer, std::int64_t rows,
                                    std::int64_t sequence) const {
  ModelMemory memory;
  if (rows > 0) {
    memory.activations = activation_estimate(rows, sequence, memory.activations_partly_unknown);
  }
  auto add = [&](const Fsdp& fsdp) {
    // One stage reduces at a time (an asynchronous reduction is finished
    // before the next one starts): the largest stage's scratch.
    memory.collective_staging = std::max(memory.collective_staging, fsdp.reduce_scratch_bytes());
    const StageMemory stage = fsdp.memory();
    memory.weight_shards += stage.weight_shard;
    memory.gradient_shards += stage.gradient_shard;
    memory.weight_buffers += stage.weight_buffer;
    memory.gradient_buffers += stage.gradient_buffer;
  };
  for (const Stage& stage : stages_) {
    if (stage.fsdp) add(*stage.fsdp);
  }
  if (tied_) add(*tied_);
  for (const auto& buffer : shared_weight_buffers_) {
    memory.weight_buffers += static_cast<std::int64_t>(buffer->tensor().nbytes());
  }
  for (const auto& buffer : shared_gradient_buffers_) {
    memory.gradient_buffers += static_cast<std::int64_t>(buffer->tensor().nbytes());
  }
  if (optimizer != nullptr) memory.optimizer_state = optimizer->state_bytes();
  return memory;
}

}  // namespace fsdp::stages
