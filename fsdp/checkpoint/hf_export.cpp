#include "fsdp/checkpoint/hf_export.h"

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdio>
#include <exception>
#include <functional>
#include <memory>

#include "fsdp/checkpoint/checkpoint_error.h"
#include "fsdp/checkpoint/element_conversion.h"
#include "fsdp/checkpoint/file_io.h"
#include "fsdp/checkpoint/hf_checkpoint.h"
#include "fsdp/checkpoint/safetensors_file.h"
#include "fsdp/checkpoint/stage_group.h"
#include "fsdp/collective_errors.h"
#include "fsdp/torch_interop.h"

namespace fsdp::checkpoint {
namespace {

namespace fs = std::filesystem;

struct OutputTensor {
  const ConversionPiece* piece;
  std::size_t stage_index;
  SafetensorsDtype dtype;
};

struct OutputFile {
  std::string name;
  std::vector<TensorDeclaration> declarations;
  std::vector<const OutputTensor*> order;  // in the writer's data order
};

// Files of at most max_file_bytes (a tensor larger than that gets a file of
// its own), tensors in key order, named as transformers names them.
std::vector<OutputFile> split_into_files(const std::vector<OutputTensor>& tensors,
                                         std::int64_t max_file_bytes) {
  std::vector<const OutputTensor*> sorted;
  for (const auto& tensor : tensors) sorted.push_back(&tensor);
  std::sort(sorted.begin(), sorted.end(),
            [](const auto* a, const auto* b) { return a->piece->key < b->piece->key; });
  std::vector<std::vector<const OutputTensor*>> groups;
  std::int64_t bytes_in_group = 0;
  for (const auto* tensor : sorted) {
    const std::int64_t bytes = tensor->piece->numel * dtype_size(tensor->dtype);
    if (groups.empty() || (bytes_in_group > 0 && bytes_in_group + bytes > max_file_bytes)) {
      groups.emplace_back();
      bytes_in_group = 0;
    }
    groups.back().push_back(tensor);
    bytes_in_group += bytes;
  }
  std::vector<OutputFile> files;
  for (std::size_t f = 0; f < groups.size(); ++f) {
    OutputFile file;
    if (groups.size() == 1) {
      file.name = std::string(kHfSingleFileName);
    } else {
      char name[64];
      std::snprintf(name, sizeof name, "model-%05zu-of-%05zu.safetensors", f + 1, groups.size());
      file.name = name;
    }
    for (const auto* tensor : groups[f]) {
      file.declarations.push_back({tensor->piece->key, tensor->dtype, tensor->piece->shape});
    }
    std::vector<TensorEntry> entries;
    serialize_header(file.declarations, {}, &entries);  // only for the data order
    for (const auto& entry : entries) {
      file.order.push_back(
          *std::find_if(groups[f].begin(), groups[f].end(),
                        [&](const auto* tensor) { return tensor->piece->key == entry.name; }));
    }
    files.push_back(std::move(file));
  }
  return files;
}

// Gathers one checkpoint tensor, in block order, on every rank: each rank
// fills the interval its shard owns and broadcasts it. Returns it on the host,
// in the stored order, on the writing rank only (`for_writer`); other ranks
// get an undefined tensor, and no host copy of a device tensor is made there.
at::Tensor gather_tensor(const OutputTensor& tensor, const std::vector<Fsdp*>& stages,
                         ProcessGroup& group, bool for_writer) {
  const auto& piece = *tensor.piece;
  const auto& stage = *stages[tensor.stage_index];
  const auto& layout = stage.layout();
  const auto& slot = layout.parameter(piece.parameter);
  const auto type = scalar_type_of(tensor.dtype);
  auto gathered =
      on_group_device(at::empty({piece.numel}, at::TensorOptions().dtype(*type)), group);
  const auto& shard = stage.weight_shard();
  for (int rank = 0; rank < group.size(); ++rank) {
    const auto owned = layout.shard_range(rank);
    const auto block = piece.block_interval(intersect(owned, slot.flat_range));
    if (block.empty()) continue;
    if (rank == group.rank()) {
      for (std::int64_t k = block.begin; k < block.end;) {
        const std::int64_t end = std::min(block.end, (k / piece.run + 1) * piece.run);
        gathered.narrow(0, k, end - k)
            .copy_(shard.narrow(0, piece.destination(k) - owned.begin, end - k));
        k = end;
      }
    }
    group.broadcast(span_of(gathered.narrow(0, block.begin, block.size())), rank);
  }
  if (!for_writer) return {};
  gathered = gathered.cpu();
  if (!piece.transposed) return gathered;
  // Block order [..., P, Q] back to the stored [..., Q, P].
  auto block_shape = piece.shape;
  std::swap(block_shape[block_shape.size() - 1], block_shape[block_shape.size() - 2]);
  return gathered.view(block_shape).transpose(-1, -2).contiguous().view({-1});
}

}  // namespace

void check_export_directory(const fs::path& requested) {
  const auto directory = resolve_directory_link(requested);
  std::error_code error;
  if (!fs::exists(directory, error) || fs::exists(directory / kHfSingleFileName, error) ||
      fs::exists(directory / kHfIndexFileName, error)) {
    return;  // the export replaces our files and keeps the others (write_companions)
  }
  if (!fs::is_directory(directory, error)) {
    throw CheckpointError(directory.string() + " exists and is not a directory");
  }
  refuse_to_lose(directory, directory_entries(directory),
                 "it is not a HuggingFace checkpoint (no " + std::string(kHfSingleFileName) +
                     " or " + std::string(kHfIndexFileName) + "); export elsewhere");
}

void export_hf_checkpoint(const fs::path& requested, const ConversionRules& rules,
                          const std::vector<Fsdp*>& stages, const ExportOptions& options) {
  auto& group = common_group(stages);
  // A link keeps pointing where it pointed: the directory it leads to is replaced.
  fs::path directory = requested;
  fs::path staging;
  std::vector<const FlatLayout*> layouts;
  for (const auto* stage : stages) layouts.push_back(&stage->layout());
  std::vector<ConversionPiece> pieces;
  std::vector<OutputTensor> tensors;
  std::vector<OutputFile> files;
  StagingCleanup cleanup(group.rank() == 0);  // no DIR.partial left behind by a failed export
  run_agreeing_on_failure(group, [&] {
    directory = resolve_directory_link(requested);
    staging = fs::path(directory.string() + ".partial");
    pieces = plan_export(layouts, rules);
    for (const auto& piece : pieces) {
      std::size_t stage_index = 0;
      while (!stages[stage_index]->layout().contains(piece.parameter)) ++stage_index;
      const auto& slot = stages[stage_index]->layout().parameter(piece.parameter);
      const auto dtype =
          options.dtype ? *options.dtype : safetensors_dtype_of(fsdp::scalar_type_of(slot.dtype));
      if (!scalar_type_of(dtype)) {
        throw CheckpointError(std::string("HF export: cannot write dtype ") +
                              std::string(dtype_name(dtype)));
      }
      tensors.push_back({&piece, stage_index, dtype});
    }
    files = split_into_files(tensors, options.max_file_bytes);
    if (group.rank() != 0) return;
    check_export_directory(directory);
    if (!directory.parent_path().empty()) fs::create_directories(directory.parent_path());
    fs::remove_all(staging);
    fs::create_directory(staging);
    cleanup.watch(staging);
  });
  // Every rank takes part in every tensor's broadcasts; file f's rank writes
  // it. A write that fails (a full disk) stops this rank's writing, not its
  // part in the broadcasts, which the other ranks wait on; the failure is
  // agreed after the last one.
  std::exception_ptr write_failure;
  const auto writing = [&](const std::function<void()>& write) {
    if (write_failure) return;
    try {
      write();
    } catch (...) {
      write_failure = std::current_exception();
    }
  };
  for (std::size_t f = 0; f < files.size(); ++f) {
    const bool writes = static_cast<int>(f % group.size()) == group.rank();
    std::unique_ptr<SafetensorsWriter> writer;
    if (writes) {
      writing([&] {
        writer = std::make_unique<SafetensorsWriter>(staging / files[f].name, files[f].declarations,
                                                     options.metadata);
      });
    }
    for (const auto* tensor : files[f].order) {
      const auto values = gather_tensor(*tensor, stages, group, writer != nullptr);
      if (writer) {
        writing([&] { writer->append(values.data_ptr(), values.numel() * values.element_size()); });
      }
    }
    if (writer) writing([&] { writer->finish(); });
  }
  run_agreeing_on_failure(group, [&] {
    if (write_failure) std::rethrow_exception(write_failure);
  });
  run_agreeing_on_failure(group, [&] {
    if (group.rank() != 0) return;
    if (options.write_companions) options.write_companions(staging);
    // Replacing the directory must not delete what we did not write (a
    // README, a training log): tensor files and the index of an earlier
    // export are ours, anything else must be in the new export too.
    std::vector<std::string> lost;
    for (const auto& name : entries_lost_by_replacing(directory, staging)) {
      const bool ours =
          name == kHfIndexFileName ||
          (name.size() > 12 && name.compare(name.size() - 12, 12, ".safetensors") == 0);
      if (!ours) lost.push_back(name);
    }
    refuse_to_lose(directory, lost, "move them out, or export to another directory");
    if (files.size() > 1) {
      nlohmann::json weight_map = nlohmann::json::object();
      std::int64_t total = 0;
      for (const auto& file : files) {
        for (const auto& declaration : file.declarations) {
          weight_map[declaration.name] = file.name;
          std::int64_t numel = 1;
          for (const auto dimension : declaration.shape) numel *= dimension;
          total += numel * dtype_size(declaration.dtype);
        }
      }
      const std::string text =
          nlohmann::json{{"metadata", {{"total_size", total}}}, {"weight_map", weight_map}}.dump(2);
      auto index = File::create(staging / kHfIndexFileName);
      index.append(text.data(), static_cast<std::int64_t>(text.size()));
      index.sync();
      index.close();
    }
    sync_directory(staging);
    const auto old =
        replace_directory(staging, directory, fs::path(directory.string() + ".previous"));
    sync_directory(directory.parent_path().empty() ? fs::path(".") : directory.parent_path());
    if (!old.empty()) fs::remove_all(old);
  });
  cleanup.commit();
}

}  // namespace fsdp::checkpoint
