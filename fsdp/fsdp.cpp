#include "fsdp/fsdp.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <chrono>
#include <limits>
#include <vector>

#include "fsdp/torch_interop.h"

namespace fsdp {
namespace {

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

void check_floating(ElementType type, const std::string& stage, const char* what) {
  if (!is_floating_point(type)) {
    throw std::invalid_argument("stage '" + stage + "': the " + what +
                                " must be a floating-point type, not " +
                                std::string(element_type_name(type)));
  }
}

// What a reduce-scatter of `compute` gradients produces: float32 from 16-bit
// input (process_group.h), otherwise the same type.
ElementType reduced_type(ElementType compute) {
  return is_half_precision(compute) ? ElementType::kFloat32 : compute;
}
// Whether that reduction can land in a `shard` array directly.
bool reduces_into(ElementType compute, ElementType shard) {
  return shard == compute || shard == reduced_type(compute);
}

// Prefixes the stage to a collective's error, so a timeout says which stage it hit.
template <typename Function>
void with_stage_context(const std::string& stage, const char* operation, Function&& function) {
  try {
    function();
  } catch (const CollectiveTimeoutError& error) {
    throw CollectiveTimeoutError("stage '" + stage + "' " + operation + ": " + error.what());
  } catch (const CommunicationError& error) {
    throw CommunicationError("stage '" + stage + "' " + operation + ": " + error.what());
  }
}

// "cuda" (no index: the current device) names the same device as the
// "cuda:N" a tensor made with it reports; c10::Device's == says they differ.
bool same_device(c10::Device a, c10::Device b) {
  return a.type() == b.type() && (!a.has_index() || !b.has_index() || a.index() == b.index());
}

std::shared_ptr<StageBuffer> checked_shared_buffer(std::shared_ptr<StageBuffer> buffer,
                                                   const std::string& stage, std::int64_t numel,
                                                   ElementType element_type, c10::Device device) {
  const at::Tensor& tensor = buffer->tensor();
  const c10::ScalarType dtype = scalar_type_of(element_type);
  if (tensor.numel() < numel || tensor.scalar_type() != dtype ||
      !same_device(tensor.device(), device)) {
    throw std::invalid_argument(
        "stage '" + stage + "': the " + buffer->name() + " holds " +
        std::to_string(tensor.numel()) + " " + c10::toString(tensor.scalar_type()) + " on " +
        tensor.device().str() + ", but the stage needs at least " + std::to_string(numel) + " " +
        c10::toString(dtype) + " on " + device.str());
  }
  return buffer;
}

}  // namespace

Fsdp::Fsdp(std::string stage_name, std::vector<ParameterSpec> parameters,
           std::shared_ptr<ProcessGroup> group, FsdpOptions options, SharedStageBuffers shared)
    : stage_name_(std::move(stage_name)),
      layout_(std::move(parameters), group ? group->size() : 1, options.alignment),
      group_(std::move(group)),
      options_(options) {
  if (!group_) throw std::invalid_argument("stage '" + stage_name_ + "': no process group given");
  check_floating(options_.shard_dtype, stage_name_, "shard dtype");
  check_floating(options_.compute_dtype, stage_name_, "compute dtype");
  const bool wants_cuda = group_->memory_location() == MemoryLocation::kCuda;
  if (options_.device.is_cuda() != wants_cuda) {
    throw std::invalid_argument("stage '" + stage_name_ + "': the " +
                                std::string(group_->backend_name()) + " process group needs " +
                                (wants_cuda ? "a CUDA device" : "the CPU") +
                                ", but the stage is on " + options_.device.str());
  }
  if (options_.device.is_cuda() && !at::hasCUDA()) {
    throw std::invalid_argument(
        "stage '" + stage_name_ + "': the " + std::string(group_->backend_name()) +
        " process group keeps buffers in CUDA memory, but this libtorch was built without CUDA "
        "(Debian's libtorch is CPU-only); build against a CUDA-enabled libtorch, or run with "
        "--backend mpi");
  }
  const std::int64_t padded = layout_.padded_numel();
  auto buffer_for = [&](std::shared_ptr<StageBuffer> given, const char* kind) {
    if (given) {
      return checked_shared_buffer(std::move(given), stage_name_, padded, options_.compute_dtype,
                                   options_.device);
    }
    return std::make_shared<StageBuffer>(stage_name_ + " " + kind + " buffer", padded,
                                         options_.compute_dtype, options_.device);
  };
  shares_weight_buffer_ = shared.weights != nullptr;
  shares_gradient_buffer_ = shared.gradients != nullptr;
  weight_storage_ = buffer_for(std::move(shared.weights), "weight");
  gradient_storage_ = buffer_for(std::move(shared.gradients), "gradient");
  weight_buffer_ = weight_storage_->tensor().narrow(0, 0, padded);
  gradient_buffer_ = gradient_storage_->tensor().narrow(0, 0, padded);
  const auto on_device = at::TensorOptions().device(options_.device);
  const c10::ScalarType shard_dtype = scalar_type_of(options_.shard_dtype);
  gradient_shard_ = at::zeros({layout_.shard_numel()}, on_device.dtype(shard_dtype));
  shard_aliases_buffer_ = options_.shard_dtype == options_.compute_dtype &&
                          !options_.poison_released_buffer && !shares_weight_buffer_;
  if (shard_aliases_buffer_) {
    // Note [Shard aliasing]. Through variable_data(), so that writes to the
    // shard (loader, optimizer) are not tracked as in-place edits of the views.
    const ElementRange own = layout_.shard_range(group_->rank());
    weight_shard_ = weight_buffer_.variable_data().narrow(0, own.begin, own.size());
  } else {
    weight_shard_ = at::zeros({layout_.shard_numel()}, on_device.dtype(shard_dtype));
  }

  parameter_views_.reserve(layout_.parameters().size());
  for (const ParameterSlot& slot : layout_.parameters()) {
    at::Tensor view = weight_buffer_.narrow(0, slot.flat_range.begin, slot.numel).view(slot.shape);
    if (options_.requires_grad) {
      view.requires_grad_(true);
      // Autograd adds into an existing .grad() in place, so gradients land in
      // the flat gradient buffer, ready to be reduce-scattered as one array.
      view.mutable_grad() =
          gradient_buffer_.narrow(0, slot.flat_range.begin, slot.numel).view(slot.shape);
    }
    parameter_views_.push_back(std::move(view));
  }
}

StageMemory Fsdp::memory() const {
  StageMemory memory;
  memory.weight_shard =
      shard_aliases_buffer_ ? 0 : static_cast<std::int64_t>(weight_shard_.nbytes());
  memory.gradient_shard = static_cast<std::int64_t>(gradient_shard_.nbytes());
  memory.weight_buffer =
      shares_weight_buffer_ ? 0 : static_cast<std::int64_t>(weight_buffer_.nbytes());
  memory.gradient_buffer =
      shares_gradient_buffer_ ? 0 : static_cast<std::int64_t>(gradient_buffer_.nbytes());
  return memory;
}

std::int64_t Fsdp::reduce_scratch_bytes() const {
  const ElementType compute = options_.compute_dtype;
  return group_->reduce_scatter_scratch_bytes(
      layout_.padded_numel(), compute,
      reduces_into(compute, options_.shard_dtype) ? options_.shard_dtype : reduced_type(compute));
}

void Fsdp::initialize_weights(std::uint64_t seed) {
  // Values are generated in float64 a chunk at a time (8 MiB), then rounded
  // once into the shard: memory stays bounded whatever the parameter's size.
  constexpr std::int64_t kChunk = std::int64_t{1} << 20;
  invalidate();  // before writing: an all-gather in flight may read the shard
  std::vector<double> staging;
  const at::Tensor shard = weight_shard_.variable_data();
  for (const OwnedSlice& slice : layout_.owned_slices(group_->rank())) {
    const ParameterSlot& slot = layout_.parameters()[slice.parameter_index];
    at::Tensor destination = shard.narrow(0, slice.shard_range.begin, slice.shard_range.size());
    if (slot.init.kind == ParameterInit::Kind::kZeros ||
        slot.init.kind == ParameterInit::Kind::kConstant) {
      destination.fill_(slot.init.a);
      continue;
    }
    const std::uint64_t key = parameter_stream_key(seed, slot.name);
    for (std::int64_t done = 0; done < slice.parameter_range.size(); done += kChunk) {
      const std::int64_t count = std::min(kChunk, slice.parameter_range.size() - done);
      staging.resize(static_cast<std::size_t>(count));
      fill_initial_values(slot.init, key, slice.parameter_range.begin + done, count,
                          staging.data());
      destination.narrow(0, done, count)
          .copy_(at::from_blob(staging.data(), {count}, at::TensorOptions().dtype(at::kDouble)));
    }
  }
}

void Fsdp::load_parameter(std::string_view name, const at::Tensor& values) {
  const ParameterSlot& slot = layout_.parameter(name);
  if (values.sizes().vec() != slot.shape) {
    throw std::invalid_argument("stage '" + stage_name_ + "': parameter '" + std::string(name) +
                                "' has shape " + c10::str(c10::IntArrayRef(slot.shape)) +
                                ", but the values given have shape " + c10::str(values.sizes()));
  }
  invalidate();
  const at::Tensor flat = values.detach().reshape({-1});
  const at::Tensor shard = weight_shard_.variable_data();
  for (const OwnedSlice& slice : layout_.owned_slices(group_->rank())) {
    if (layout_.parameters()[slice.parameter_index].name != name) continue;
    shard.narrow(0, slice.shard_range.begin, slice.shard_range.size())
        .copy_(flat.narrow(0, slice.parameter_range.begin, slice.parameter_range.size()));
  }
}

void Fsdp::begin_restore() {
  if (restored_ || pending_restore_) return;
  weight_storage_->claim(stage_name_);  // Note [Buffer ordering]
  // Note [Buffer writes bypass autograd's version counter]
  // The buffer is written through variable_data(), a tensor that shares its
  // storage but not its version counter. Restoring writes the same values that
  // were there when autograd saved a view (ZeRO-3 restores again before
  // backward), so bumping the version would only raise false "modified by an
  // inplace operation" errors. Reading stale or foreign values is what
  // assert_restored() exists to catch.
  at::Tensor buffer = weight_buffer_.variable_data();
  if (!shard_aliases_buffer_) {
    const ElementRange own = layout_.shard_range(group_->rank());
    buffer.narrow(0, own.begin, own.size()).copy_(weight_shard_);
  }
  with_stage_context(stage_name_, "restore_parameters", [&] {
    pending_restore_ = group_->all_gather_in_place_async(span_of(buffer));
  });
  ++statistics_.restores;
}

void Fsdp::finish_pending_restore() {
  if (!pending_restore_) return;
  with_stage_context(stage_name_, "restore_parameters", [&] { pending_restore_->wait(); });
  pending_restore_.reset();
}

void Fsdp::restore_parameters() {
  if (restored_) return;
  const auto start = std::chrono::steady_clock::now();
  if (pending_restore_) ++statistics_.prefetched_restores;
  begin_restore();
  finish_pending_restore();
  restored_ = true;
  statistics_.restore_seconds += seconds_since(start);
}

void Fsdp::progress() {
  if (pending_restore_) {
    with_stage_context(stage_name_, "restore_parameters",
                       [&] { pending_restore_->is_completed(); });
  }
  if (pending_reduce_) {
    with_stage_context(stage_name_, "reduce_gradients", [&] { pending_reduce_->is_completed(); });
  }
}

bool Fsdp::may_begin_restore() const {
  return restored_ || pending_restore_ || weight_storage_->may_claim(stage_name_);
}

void Fsdp::release() {
  invalidate();
  if (options_.poison_released_buffer) {
    weight_buffer_.variable_data().fill_(std::numeric_limits<double>::quiet_NaN());
  }
}

void Fsdp::invalidate() {
  finish_pending_restore();
  restored_ = false;
  weight_storage_->give_up(stage_name_);
}

void Fsdp::assert_restored(std::string_view parameter_name) const {
  if (restored_) return;
  if (pending_restore_) {
    throw NotRestoredError("stage '" + stage_name_ + "': parameter '" +
                           std::string(parameter_name) +
                           "' was read while the stage's all-gather (started by begin_restore(), "
                           "a prefetch) is still in flight; call restore_parameters() to finish "
                           "it before forward.");
  }
  throw NotRestoredError(
      "stage '" + stage_name_ + "': parameter '" + std::string(parameter_name) +
      "' was read while the stage's weights are not restored. Its view of the weight buffer "
      "does not hold the weights (zeros or stale values, at best this rank's own slice). Call "
      "restore_parameters() on the stage "
      "before forward; to read the true values without restoring, use the inspector "
      "(fsdp/inspector.h), which reads the shards.");
}

at::Tensor Fsdp::parameter(std::string_view name) const {
  const std::size_t index = layout_.parameter_index(name);
  assert_restored(name);
  return parameter_views_[index];
}

void Fsdp::zero_gradient_buffer() {
  finish_reduce_gradients();
  gradient_storage_->claim(stage_name_);  // Note [Buffer ordering]
  gradient_buffer_.variable_data().zero_();
}

void Fsdp::zero_gradient_shard() {
  finish_reduce_gradients();
  gradient_shard_.variable_data().zero_();
}

void Fsdp::reduce_gradients(GradientReduction reduction, GradientUpdate update) {
  begin_reduce_gradients(reduction, update);
  finish_reduce_gradients();
}

void Fsdp::begin_reduce_gradients(GradientReduction reduction, GradientUpdate update) {
  finish_reduce_gradients();  // the same stage again (the next micro-batch)
  if (!gradient_storage_->may_claim(stage_name_)) {
    throw std::logic_error("stage '" + stage_name_ + "': reduce_gradients() found its shared " +
                           gradient_storage_->name() + " held by stage '" +
                           gradient_storage_->holder() +
                           "', so this stage's gradients were overwritten: reduce each stage's "
                           "gradients before the next stage sharing the buffer runs backward");
  }
  const auto start = std::chrono::steady_clock::now();
  const ReduceOp op =
      reduction == GradientReduction::kAverage ? ReduceOp::kAverage : ReduceOp::kSum;
  const at::Tensor input = gradient_buffer_.variable_data();
  const at::Tensor shard = gradient_shard_.variable_data();
  // Accumulation, and a shard the group cannot reduce into, go through a
  // shard-sized temporary.
  const bool direct_output = update == GradientUpdate::kOverwrite &&
                             reduces_into(options_.compute_dtype, options_.shard_dtype);
  at::Tensor output = shard;
  if (!direct_output) {
    const c10::ScalarType reduced_dtype = scalar_type_of(reduced_type(options_.compute_dtype));
    output = at::empty({layout_.shard_numel()}, shard.options().dtype(reduced_dtype));
    pending_reduce_output_ = output;
  }
  // The claim covers the collective: the buffer is its input until finished.
  gradient_storage_->claim(stage_name_);
  with_stage_context(stage_name_, "reduce_gradients", [&] {
    pending_reduce_ = group_->reduce_scatter_async(span_of(input), span_of(output), op);
  });
  pending_reduce_update_ = update;
  pending_reduce_seconds_ = seconds_since(start);
}

void Fsdp::finish_reduce_gradients() {
  if (!pending_reduce_) return;
  const auto start = std::chrono::steady_clock::now();
  with_stage_context(stage_name_, "reduce_gradients", [&] {
    pending_reduce_->wait();
    if (pending_reduce_output_.defined()) {
      const at::Tensor shard = gradient_shard_.variable_data();
      if (pending_reduce_update_ == GradientUpdate::kAccumulate) {
        shard.add_(pending_reduce_output_);
      } else {
        shard.copy_(pending_reduce_output_);
      }
    }
  });
  pending_reduce_.reset();
  pending_reduce_output_ = at::Tensor();
  gradient_storage_->give_up(stage_name_);
  statistics_.reduce_seconds += pending_reduce_seconds_ + seconds_since(start);
  pending_reduce_seconds_ = 0;
}

bool Fsdp::may_claim_gradient_buffer() const {
  return !pending_reduce_ && gradient_storage_->may_claim(stage_name_);
}

}  // namespace fsdp
