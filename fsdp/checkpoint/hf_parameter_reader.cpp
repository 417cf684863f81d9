#include "fsdp/checkpoint/hf_parameter_reader.h"

#include <ATen/ATen.h>

#include <memory>
#include <stdexcept>
#include <string>

#include "fsdp/checkpoint/checkpoint_error.h"
#include "fsdp/checkpoint/element_conversion.h"
#include "fsdp/torch_interop.h"

namespace fsdp::checkpoint {

at::Tensor read_hf_parameter(const ParameterPlan& plan, const ParameterSlot& slot,
                             ElementType element_type) {
  const c10::ScalarType type = scalar_type_of(element_type);
  if (plan.parameter != slot.name) {
    throw std::invalid_argument("read_hf_parameter: the plan is for \"" + plan.parameter +
                                "\", not \"" + slot.name + "\"");
  }
  auto flat = at::empty({slot.numel}, at::TensorOptions().dtype(type));
  // Coverage, element by element: the planner checks that the pieces tile
  // the parameter, and this checks that what was copied is that tiling.
  auto written = at::zeros({slot.numel}, at::kByte);
  for (const auto& piece : plan.pieces) {
    if (piece.numel == 0) continue;
    if (piece.source.file == nullptr || piece.source.entry == nullptr) {
      throw std::invalid_argument("read_hf_parameter: piece \"" + piece.key + "\" of \"" +
                                  slot.name +
                                  "\" has no source (a plan made without a checkpoint)");
    }
    const auto& file = *piece.source.file;
    const auto& entry = *piece.source.entry;
    // A stride shorter than a run would make runs overlap (and as_strided
    // would write through them silently); a transpose needs two dimensions.
    if (entry.numel() != piece.numel || piece.run <= 0 || piece.numel % piece.run != 0 ||
        (piece.numel > piece.run && piece.destination_stride < piece.run) ||
        (piece.transposed && entry.shape.size() < 2)) {
      throw CheckpointError(file.path() + ": tensor \"" + piece.key + "\" " +
                            format_shape(entry.shape) + " does not fit its place in \"" +
                            slot.name + "\"");
    }
    std::unique_ptr<char[]> bytes(new char[static_cast<std::size_t>(entry.bytes())]);
    file.read_tensor_bytes(entry, 0, bytes.get(), entry.bytes());
    auto stored = at::empty(entry.shape, at::TensorOptions().dtype(type));
    try {
      convert_elements(bytes.get(), entry.dtype, stored.data_ptr(), type, piece.numel);
    } catch (const std::exception& error) {
      throw CheckpointError(file.path() + ": tensor \"" + piece.key + "\" for \"" + slot.name +
                            "\": " + error.what());
    }
    bytes.reset();
    // Block order: the stored tensor, or its transpose over the last two dimensions.
    const auto block = piece.transposed ? stored.transpose(-2, -1).contiguous().reshape({-1})
                                        : stored.reshape({-1});
    const std::int64_t runs = piece.numel / piece.run;
    // destination(k) = base + (k / run) * stride + k % run, in the stage's
    // flat index space: the parameter's elements start at its flat_range.begin.
    const std::int64_t offset = piece.destination_base - slot.flat_range.begin;
    const std::int64_t last =
        offset + (runs - 1) * piece.destination_stride + piece.run;  // one past the last
    if (offset < 0 || last > slot.numel) {
      throw CheckpointError(file.path() + ": tensor \"" + piece.key +
                            "\" lands outside parameter \"" + slot.name + "\"");
    }
    flat.as_strided({runs, piece.run}, {piece.destination_stride, 1}, offset)
        .copy_(block.view({runs, piece.run}));
    written.as_strided({runs, piece.run}, {piece.destination_stride, 1}, offset).add_(1);
  }
  if (slot.numel > 0 && !written.eq(1).all().item<bool>()) {
    const auto gaps = written.eq(0).sum().item<std::int64_t>();
    throw CheckpointError("parameter \"" + slot.name + "\": the checkpoint's tensors cover " +
                          std::to_string(slot.numel - gaps) + " of its " +
                          std::to_string(slot.numel) + " elements" +
                          (written.gt(1).any().item<bool>() ? ", some more than once" : ""));
  }
  return flat.view(slot.shape);
}

}  // namespace fsdp::checkpoint
