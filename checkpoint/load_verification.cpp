#include "checkpoint/load_verification.h"

#include <ATen/ATen.h>

#include <cmath>
#include <limits>

#include "checkpoint/checkpoint_error.h"
#include "checkpoint/stage_group.h"
#include "fsdp/torch_interop.h"

namespace fsdp::checkpoint {
namespace {

// NaNs in `values`, without allocating anything shard-sized: a float32 host
// shard is scanned in place; anything else in small chunks (torch's sum of a
// boolean mask widens it to int64, 8 bytes per element).
std::int64_t count_nan(const at::Tensor& values) {
  if (values.device().is_cpu() && values.scalar_type() == at::kFloat && values.is_contiguous()) {
    // On the bits, which the compiler vectorises (std::isnan it does not):
    // NaN is an all-ones exponent with a non-zero mantissa.
    const auto* bits = static_cast<const std::uint32_t*>(values.data_ptr());
    std::int64_t total = 0;
    for (std::int64_t i = 0; i < values.numel(); ++i) {
      total += (bits[i] & 0x7fffffffu) > 0x7f800000u;
    }
    return total;
  }
  constexpr std::int64_t kChunk = std::int64_t{1} << 16;
  std::int64_t total = 0;
  for (std::int64_t begin = 0; begin < values.numel(); begin += kChunk) {
    const auto piece = values.narrow(0, begin, std::min(kChunk, values.numel() - begin));
    total += piece.isnan().sum().item<std::int64_t>();
  }
  return total;
}

}  // namespace

LoadVerification::LoadVerification(std::vector<Fsdp*> stages) : stages_(std::move(stages)) {
  for (auto* stage : stages_) {
    stage->invalidate();
    const auto& layout = stage->layout();
    const auto padding = layout.padding_in_shard(stage->group().rank());
    auto shard = stage->weight_shard();
    shard.narrow(0, 0, padding.begin).fill_(std::numeric_limits<double>::quiet_NaN());
    shard.narrow(0, padding.begin, padding.size()).zero_();
    counts_.emplace_back(layout.parameters().size(), 0);
  }
}

void LoadVerification::verify_local(const std::string& source) const {
  for (std::size_t s = 0; s < stages_.size(); ++s) {
    const auto* stage = stages_[s];
    const auto& layout = stage->layout();
    const int rank = stage->group().rank();
    std::vector<std::int64_t> owned(layout.parameters().size(), 0);
    for (const auto& slice : layout.owned_slices(rank)) {
      owned[slice.parameter_index] += slice.shard_range.size();
    }
    for (std::size_t p = 0; p < owned.size(); ++p) {
      if (counts_[s][p] != owned[p]) {
        throw CheckpointError(source + ": stage \"" + stage->stage_name() + "\" parameter \"" +
                              layout.parameters()[p].name + "\": rank " + std::to_string(rank) +
                              " owns " + std::to_string(owned[p]) + " elements but " +
                              std::to_string(counts_[s][p]) + " were written");
      }
    }
    const auto padding = layout.padding_in_shard(rank);
    if (count_nan(stage->weight_shard().narrow(0, 0, padding.begin)) == 0) continue;
    for (const auto& slice : layout.owned_slices(rank)) {
      const auto part =
          stage->weight_shard().narrow(0, slice.shard_range.begin, slice.shard_range.size());
      if (const auto nans = count_nan(part); nans != 0) {
        throw CheckpointError(source + ": stage \"" + stage->stage_name() + "\" parameter \"" +
                              layout.parameters()[slice.parameter_index].name + "\" holds " +
                              std::to_string(nans) +
                              " NaN values after loading (NaN in the checkpoint itself?)");
      }
    }
  }
}

void LoadVerification::verify_global(const std::string& source) const {
  if (stages_.empty()) return;
  std::vector<std::int64_t> all_counts;
  for (const auto& counts : counts_)
    all_counts.insert(all_counts.end(), counts.begin(), counts.end());
  auto& group = stages_.front()->group();
  auto summed = on_group_device(at::tensor(all_counts, at::kLong), group);
  group.all_reduce(span_of(summed), ReduceOp::kSum);
  summed = summed.cpu();
  const auto* totals = summed.data_ptr<std::int64_t>();
  std::size_t index = 0;
  for (const auto* stage : stages_) {
    for (const auto& parameter : stage->layout().parameters()) {
      if (totals[index] != parameter.numel) {
        throw CheckpointError(source + ": stage \"" + stage->stage_name() + "\" parameter \"" +
                              parameter.name + "\": " + std::to_string(totals[index]) +
                              " elements written over all ranks, expected " +
                              std::to_string(parameter.numel));
      }
      ++index;
    }
  }
}

}  // namespace fsdp::checkpoint
