#include "fsdp/checkpoint/load_verification.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <limits>

#include "fsdp/checkpoint/checkpoint_error.h"
#include "fsdp/checkpoint/stage_group.h"
#include "fsdp/torch_interop.h"

namespace fsdp::checkpoint {
namespace {

std::string describe(ElementRange range) {
  return "[" + std::to_string(range.begin) + ", " + std::to_string(range.end) + ")";
}

std::string parameter_context(const std::string& source, const Fsdp& stage,
                              std::size_t parameter_index) {
  return source + ": stage \"" + stage.stage_name() + "\" parameter \"" +
         stage.layout().parameters()[parameter_index].name + "\"";
}

}  // namespace

LoadVerification::LoadVerification(std::vector<Fsdp*> stages)
    : stages_(std::move(stages)), written_(stages_.size()) {
  for (auto* stage : stages_) {
    stage->invalidate();
    const auto padding = stage->layout().padding_in_shard(stage->group().rank());
    stage->weight_shard().narrow(0, padding.begin, padding.size()).zero_();
  }
}

void LoadVerification::record(std::size_t stage_index, std::size_t parameter_index,
                              std::int64_t shard_offset, std::int64_t count) {
  if (count == 0) return;
  auto& written = written_[stage_index];
  if (!written.empty() && written.back().parameter_index == parameter_index &&
      written.back().shard_range.end == shard_offset) {
    written.back().shard_range.end += count;
    return;
  }
  written.push_back({parameter_index, {shard_offset, shard_offset + count}});
}

void LoadVerification::verify_local(const std::string& source) const {
  for (std::size_t s = 0; s < stages_.size(); ++s) {
    const auto& stage = *stages_[s];
    const auto& layout = stage.layout();
    const int rank = stage.group().rank();
    const auto slices = layout.owned_slices(rank);  // in shard order
    std::vector<std::int64_t> owned(layout.parameters().size(), 0);
    for (const auto& slice : slices) owned[slice.parameter_index] += slice.shard_range.size();

    auto written = written_[s];
    std::sort(written.begin(), written.end(), [](const Written& a, const Written& b) {
      return a.shard_range.begin < b.shard_range.begin;
    });
    std::vector<std::int64_t> counts(owned.size(), 0);
    std::int64_t previous_end = 0;
    for (const auto& write : written) {
      const auto context = parameter_context(source, stage, write.parameter_index);
      if (write.shard_range.begin < previous_end) {
        throw CheckpointError(
            context + ": elements " +
            describe({write.shard_range.begin, std::min(previous_end, write.shard_range.end)}) +
            " of rank " + std::to_string(rank) +
            "'s shard were written twice (two checkpoint tensors map there)");
      }
      previous_end = write.shard_range.end;
      // The owned slice holding the write's first element.
      const auto after = std::upper_bound(slices.begin(), slices.end(), write.shard_range.begin,
                                          [](std::int64_t offset, const OwnedSlice& slice) {
                                            return offset < slice.shard_range.begin;
                                          });
      const bool inside = after != slices.begin() &&
                          std::prev(after)->parameter_index == write.parameter_index &&
                          std::prev(after)->shard_range.end >= write.shard_range.end;
      if (!inside) {
        throw CheckpointError(context + ": elements " + describe(write.shard_range) + " of rank " +
                              std::to_string(rank) +
                              "'s shard were written for it, but that rank does not own them "
                              "as part of this parameter");
      }
      counts[write.parameter_index] += write.shard_range.size();
    }
    for (std::size_t p = 0; p < owned.size(); ++p) {
      if (counts[p] != owned[p]) {
        throw CheckpointError(parameter_context(source, stage, p) + ": rank " +
                              std::to_string(rank) + " owns " + std::to_string(owned[p]) +
                              " elements but " + std::to_string(counts[p]) + " were written");
      }
    }
  }
}

void LoadVerification::verify_global(const std::string& source) const {
  if (stages_.empty()) return;
  // Every stage's per-parameter counts, one after the other, in one pass over the writes.
  std::vector<std::int64_t> all_counts;
  for (std::size_t s = 0; s < stages_.size(); ++s) {
    const std::size_t first = all_counts.size();
    all_counts.resize(first + stages_[s]->layout().parameters().size(), 0);
    for (const auto& write : written_[s]) {
      all_counts[first + write.parameter_index] += write.shard_range.size();
    }
  }
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

void LoadVerification::poison() const {
  for (auto* stage : stages_) {
    const auto padding = stage->layout().padding_in_shard(stage->group().rank());
    auto shard = stage->weight_shard();
    shard.narrow(0, 0, padding.begin).fill_(std::numeric_limits<double>::quiet_NaN());
    shard.narrow(0, padding.begin, padding.size()).zero_();
  }
}

}  // namespace fsdp::checkpoint
