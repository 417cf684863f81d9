#include "fsdp/checkpoint/distributed_checkpoint.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <memory>

#include "fsdp/checkpoint/block_checksums.h"
#include "fsdp/checkpoint/checkpoint_error.h"
#include "fsdp/checkpoint/element_conversion.h"
#include "fsdp/checkpoint/file_io.h"
#include "fsdp/checkpoint/json_input.h"
#include "fsdp/checkpoint/load_verification.h"
#include "fsdp/checkpoint/safetensors_file.h"
#include "fsdp/checkpoint/stage_group.h"
#include "fsdp/checkpoint/verified_reader.h"
#include "fsdp/collective_errors.h"
#include "fsdp/stages/sharded_adamw.h"
#include "fsdp/torch_interop.h"

namespace fsdp::checkpoint {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
namespace key = index_key;

fs::path staging_path(const fs::path& directory) { return directory.string() + ".partial"; }

// Every rank's values of `mine`, concatenated in rank order, where rank r
// contributes counts[r] values (all_reduce of a zero-padded vector: adding
// zeros to a single non-zero term is exact). REQUIRES: mine.size() == counts[rank].
std::vector<std::int64_t> all_gather_values(ProcessGroup& group,
                                            const std::vector<std::int64_t>& mine,
                                            const std::vector<std::int64_t>& counts) {
  if (static_cast<std::int64_t>(mine.size()) != counts.at(group.rank())) {
    throw std::logic_error("all_gather_values: this rank contributes " +
                           std::to_string(mine.size()) + " values, not " +
                           std::to_string(counts.at(group.rank())));
  }
  std::int64_t total = 0, offset = 0;
  for (int r = 0; r < group.size(); ++r) {
    if (r == group.rank()) offset = total;
    total += counts[r];
  }
  auto values = at::zeros({total}, at::kLong);
  std::copy(mine.begin(), mine.end(), values.data_ptr<std::int64_t>() + offset);
  values = on_group_device(values, group);
  group.all_reduce(span_of(values), ReduceOp::kSum);
  values = values.cpu();
  return {values.data_ptr<std::int64_t>(), values.data_ptr<std::int64_t>() + total};
}

json stage_to_json(const Fsdp& stage) {
  const auto& layout = stage.layout();
  json parameters = json::array();
  for (const auto& slot : layout.parameters()) {
    parameters.push_back({{key::kName, slot.name},
                          {key::kShape, slot.shape},
                          {key::kDtype, std::string(element_type_name(slot.dtype))},
                          {key::kFlatRange, {slot.flat_range.begin, slot.flat_range.end}}});
  }
  return {{key::kName, stage.stage_name()},
          {key::kShardDtype, std::string(element_type_name(stage.options().shard_dtype))},
          {key::kUnpaddedNumel, layout.unpadded_numel()},
          {key::kShardNumel, layout.shard_numel()},
          {key::kParameters, parameters}};
}

// The shards one rank writes, by tensor name.
std::vector<std::pair<std::string, at::Tensor>> shards_to_save(
    const std::vector<Fsdp*>& stages, const stages::ShardedAdamW* optimizer, bool gradients) {
  std::vector<std::pair<std::string, at::Tensor>> shards;
  for (std::size_t s = 0; s < stages.size(); ++s) {
    const auto& name = stages[s]->stage_name();
    shards.emplace_back(shard_tensor_name(name, ShardArray::kWeights), stages[s]->weight_shard());
    if (gradients)
      shards.emplace_back(shard_tensor_name(name, ShardArray::kGradients),
                          stages[s]->gradient_shard());
    if (optimizer != nullptr) {
      shards.emplace_back(shard_tensor_name(name, ShardArray::kExpAvg), optimizer->exp_avg(s));
      shards.emplace_back(shard_tensor_name(name, ShardArray::kExpAvgSq), optimizer->exp_avg_sq(s));
    }
  }
  return shards;
}

struct WrittenFile {
  std::int64_t bytes = 0;
  std::vector<std::uint64_t> checksums;
};

WrittenFile write_rank_file(const fs::path& path, int rank, int world_size,
                            const std::vector<std::pair<std::string, at::Tensor>>& shards,
                            const SaveOptions& options) {
  std::vector<TensorDeclaration> declarations;
  for (const auto& [name, tensor] : shards) {
    declarations.push_back({name, safetensors_dtype_of(tensor.scalar_type()), {tensor.numel()}});
  }
  SafetensorsWriter writer(path, declarations,
                           {{rank_file_metadata_key::kFormat, kCheckpointFormat},
                            {rank_file_metadata_key::kRank, std::to_string(rank)},
                            {rank_file_metadata_key::kWorldSize, std::to_string(world_size)}},
                           options.checksum_block_bytes);
  for (const auto& entry : writer.tensors_in_file_order()) {
    const auto& tensor = std::find_if(shards.begin(), shards.end(), [&](const auto& shard) {
                           return shard.first == entry.name;
                         })->second;
    if (tensor.device().is_cpu()) {
      writer.append(tensor.data_ptr(), entry.bytes());
      continue;
    }
    // Device shards go through one pinned chunk, reused: page-locked memory
    // is what the copy engine reads and writes at full speed.
    const std::int64_t chunk = std::min<std::int64_t>(
        tensor.numel(), std::max<std::int64_t>(1, options.chunk_bytes / tensor.element_size()));
    at::Tensor staging = at::empty({chunk}, tensor.options().device(at::kCPU).pinned_memory(true));
    for (std::int64_t first = 0; first < tensor.numel(); first += chunk) {
      const std::int64_t count = std::min(chunk, tensor.numel() - first);
      staging.narrow(0, 0, count).copy_(tensor.narrow(0, first, count));
      writer.append(staging.data_ptr(), count * staging.element_size());
    }
  }
  writer.finish();
  return {writer.file_size(), writer.checksums()};
}

void write_index(const fs::path& path, const json& index) {
  const std::string text = index.dump(1);
  auto file = File::create(path);
  file.append(text.data(), static_cast<std::int64_t>(text.size()));
  file.sync();
  file.close();
}

// The model's stages must be the checkpoint's, parameter for parameter.
void check_layout(const CheckpointIndex& index, const std::vector<Fsdp*>& stages) {
  const std::string context = (index.directory / kCheckpointIndexFileName).string();
  if (index.stages.size() != stages.size()) {
    throw CheckpointError(context + ": the checkpoint has " + std::to_string(index.stages.size()) +
                          " stages, the model " + std::to_string(stages.size()) +
                          " (a different model, or a different layers_per_stage)");
  }
  for (std::size_t s = 0; s < stages.size(); ++s) {
    const auto& record = index.stages[s];
    const auto& layout = stages[s]->layout();
    const std::string where = context + ": stage " + std::to_string(s);
    if (record.name != stages[s]->stage_name()) {
      throw CheckpointError(where + " is \"" + record.name + "\" in the checkpoint and \"" +
                            stages[s]->stage_name() + "\" in the model");
    }
    const auto model_dtype = std::string(element_type_name(stages[s]->options().shard_dtype));
    if (record.shard_dtype != model_dtype) {
      throw CheckpointError(where + " (\"" + record.name + "\"): shards are " + record.shard_dtype +
                            " in the checkpoint and " + model_dtype + " in the model");
    }
    const std::size_t count = std::max(record.parameters.size(), layout.parameters().size());
    for (std::size_t p = 0; p < count; ++p) {
      if (p >= record.parameters.size() || p >= layout.parameters().size()) {
        const bool model_has_more = p >= record.parameters.size();
        throw CheckpointError(
            where + " (\"" + record.name + "\"): parameter \"" +
            (model_has_more ? layout.parameters()[p].name : record.parameters[p].name) +
            "\" is only in the " + (model_has_more ? "model" : "checkpoint"));
      }
      const auto& saved = record.parameters[p];
      const auto& slot = layout.parameters()[p];
      if (saved.name != slot.name || saved.shape != slot.shape || saved.dtype != slot.dtype ||
          !(record.flat_ranges[p] == slot.flat_range)) {
        throw CheckpointError(where + " (\"" + record.name + "\"), parameter " + std::to_string(p) +
                              ": the checkpoint has \"" + saved.name + "\" " +
                              format_shape(saved.shape) + " " +
                              std::string(element_type_name(saved.dtype)) + ", the model \"" +
                              slot.name + "\" " + format_shape(slot.shape) + " " +
                              std::string(element_type_name(slot.dtype)) + " (a different model?)");
      }
    }
  }
}

// Copies the overlap of the old shards of `what` into this rank's new shard `destination`.
void load_shards(const CheckpointIndex& index, std::size_t stage_index, const Fsdp& stage,
                 ShardArray what, const at::Tensor& destination,
                 std::vector<std::unique_ptr<VerifiedReader>>& readers, std::int64_t chunk_bytes,
                 LoadVerification* verification) {
  const auto& record = index.stages[stage_index];
  const auto& layout = stage.layout();
  const int rank = stage.group().rank();
  const auto owned = intersect(layout.shard_range(rank), {0, layout.unpadded_numel()});
  const auto new_begin = layout.shard_range(rank).begin;
  const std::int64_t element_bytes = static_cast<std::int64_t>(destination.element_size());
  for (int old_rank = 0; old_rank < index.world_size; ++old_rank) {
    const ElementRange old_range{old_rank * record.shard_numel,
                                 (old_rank + 1) * record.shard_numel};
    const auto overlap = intersect(owned, old_range);
    if (overlap.empty()) continue;
    auto& reader = readers[old_rank];
    if (!reader) {
      reader = std::make_unique<VerifiedReader>(index.directory / index.files[old_rank].name,
                                                index.files[old_rank], chunk_bytes);
    }
    const auto name = shard_tensor_name(record.name, what);
    const auto& entry = reader->file().tensor(name);
    if (entry.shape != std::vector<std::int64_t>{record.shard_numel} ||
        dtype_size(entry.dtype) != element_bytes) {
      throw CheckpointError(reader->file().path() + ": tensor \"" + name + "\" is " +
                            std::string(dtype_name(entry.dtype)) + " " + format_shape(entry.shape) +
                            ", expected " + std::to_string(record.shard_numel) + " elements of " +
                            std::to_string(element_bytes) + " bytes");
    }
    const std::int64_t file_offset = reader->file().header().data_offset() + entry.begin +
                                     (overlap.begin - old_range.begin) * element_bytes;
    const std::int64_t bytes = overlap.size() * element_bytes;
    const std::int64_t shard_offset = overlap.begin - new_begin;
    if (destination.device().is_cpu()) {
      reader->read(file_offset,
                   static_cast<char*>(destination.data_ptr()) + shard_offset * element_bytes,
                   bytes);
    } else {
      // One pinned chunk, reused (see the writer); copy_ without non_blocking
      // returns once the device has it, so the next read may overwrite it.
      const std::int64_t chunk = std::min<std::int64_t>(
          overlap.size(), std::max<std::int64_t>(1, chunk_bytes / element_bytes));
      at::Tensor staging =
          at::empty({chunk}, destination.options().device(at::kCPU).pinned_memory(true));
      for (std::int64_t first = 0; first < overlap.size(); first += chunk) {
        const std::int64_t count = std::min(chunk, overlap.size() - first);
        reader->read(file_offset + first * element_bytes, static_cast<char*>(staging.data_ptr()),
                     count * element_bytes);
        destination.narrow(0, shard_offset + first, count).copy_(staging.narrow(0, 0, count));
      }
    }
    if (verification != nullptr) {
      for (std::size_t p = 0; p < layout.parameters().size(); ++p) {
        const auto written = intersect(overlap, layout.parameters()[p].flat_range);
        verification->record(stage_index, p, written.begin - new_begin, written.size());
      }
    }
  }
}

}  // namespace

std::string_view shard_array_name(ShardArray array) {
  switch (array) {
    case ShardArray::kWeights:
      return "weight_shard";
    case ShardArray::kGradients:
      return "gradient_shard";
    case ShardArray::kExpAvg:
      return "exp_avg";
    case ShardArray::kExpAvgSq:
      return "exp_avg_sq";
  }
  return "?";
}

std::string shard_tensor_name(const std::string& stage, ShardArray array) {
  return stage + "/" + std::string(shard_array_name(array));
}

void save_checkpoint(const fs::path& requested, const std::vector<Fsdp*>& stages,
                     const stages::ShardedAdamW* optimizer, const SaveOptions& options) {
  auto& group = common_group(stages);
  const int rank = group.rank(), world_size = group.size();
  // A link keeps pointing where it pointed: the directory it leads to is replaced.
  fs::path directory = requested;
  fs::path staging;
  StagingCleanup cleanup(rank == 0);  // no DIR.partial left behind by a failed save
  // Rank 0 prepares the staging directory; nothing at `directory` is touched yet.
  run_agreeing_on_failure(group, [&] {
    directory = resolve_directory_link(requested);
    staging = staging_path(directory);
    if (rank != 0) return;
    check_save_directory(directory);
    if (!directory.parent_path().empty()) fs::create_directories(directory.parent_path());
    fs::remove_all(staging);
    fs::create_directory(staging);
    cleanup.watch(staging);
  });
  std::vector<std::int64_t> my_record;  // [bytes, checksum...]
  run_agreeing_on_failure(group, [&] {
    const auto shards = shards_to_save(stages, optimizer, options.gradients);
    const auto written = write_rank_file(staging / rank_file_name(rank, world_size), rank,
                                         world_size, shards, options);
    my_record.push_back(written.bytes);
    for (const auto checksum : written.checksums)
      my_record.push_back(static_cast<std::int64_t>(checksum));
  });
  const auto lengths = all_gather_values(group, {static_cast<std::int64_t>(my_record.size())},
                                         std::vector<std::int64_t>(world_size, 1));
  const auto records = all_gather_values(group, my_record, lengths);
  run_agreeing_on_failure(group, [&] {
    if (rank != 0) return;
    json files = json::array();
    std::size_t cursor = 0;
    for (int r = 0; r < world_size; ++r) {
      json blocks = json::array();
      for (std::int64_t b = 1; b < lengths[r]; ++b) {
        blocks.push_back(format_checksum(static_cast<std::uint64_t>(records[cursor + b])));
      }
      files.push_back({{key::kName, rank_file_name(r, world_size)},
                       {key::kRank, r},
                       {key::kBytes, records[cursor]},
                       {key::kChecksum,
                        {{key::kAlgorithm, kChecksumAlgorithm},
                         {key::kBlockBytes, options.checksum_block_bytes},
                         {key::kBlocks, blocks}}}});
      cursor += static_cast<std::size_t>(lengths[r]);
    }
    json stage_records = json::array();
    for (const auto* stage : stages) stage_records.push_back(stage_to_json(*stage));
    const json index = {{key::kFormat, kCheckpointFormat},
                        {key::kFormatVersion, kCheckpointFormatVersion},
                        {key::kWorldSize, world_size},
                        {key::kStep, options.step},
                        {key::kTrainingConfig, options.training_config},
                        {key::kGradients, options.gradients},
                        {key::kOptimizer, optimizer != nullptr},
                        {key::kOptimizerSteps, optimizer ? optimizer->steps_taken() : 0},
                        {key::kStages, stage_records},
                        {key::kFiles, files}};
    write_index(staging / kCheckpointIndexFileName, index);
    sync_directory(staging);
    check_save_directory(directory);  // again: files may have appeared since the start
    const auto old = replace_directory(staging, directory, previous_checkpoint_path(directory));
    sync_directory(directory.parent_path().empty() ? fs::path(".") : directory.parent_path());
    if (!old.empty()) fs::remove_all(old);
  });
  cleanup.commit();
}

CheckpointIndex load_checkpoint(const fs::path& directory, const std::vector<Fsdp*>& stages,
                                stages::ShardedAdamW* optimizer,
                                const LoadCheckpointOptions& options) {
  auto& group = common_group(stages);
  CheckpointIndex index;
  std::unique_ptr<LoadVerification> verification;
  std::string source = directory.string();
  try {
    run_agreeing_on_failure(group, [&] {
      index = read_checkpoint_index(directory);
      source = index.directory.string();
      check_layout(index, stages);
      if (optimizer != nullptr && !index.has_optimizer) {
        throw CheckpointError(source + ": the checkpoint has no optimizer state to load");
      }
      if (options.gradients && !index.has_gradients) {
        throw CheckpointError(source + ": the checkpoint has no gradients to load");
      }
      verification = std::make_unique<LoadVerification>(stages);
      std::vector<std::unique_ptr<VerifiedReader>> readers(index.world_size);
      for (std::size_t s = 0; s < stages.size(); ++s) {
        auto* stage = stages[s];
        load_shards(index, s, *stage, ShardArray::kWeights, stage->weight_shard(), readers,
                    options.chunk_bytes, verification.get());
        if (options.gradients) {
          stage->gradient_shard().zero_();
          load_shards(index, s, *stage, ShardArray::kGradients, stage->gradient_shard(), readers,
                      options.chunk_bytes, nullptr);
        }
        if (optimizer != nullptr) {
          optimizer->exp_avg(s).zero_();
          optimizer->exp_avg_sq(s).zero_();
          load_shards(index, s, *stage, ShardArray::kExpAvg, optimizer->exp_avg(s), readers,
                      options.chunk_bytes, nullptr);
          load_shards(index, s, *stage, ShardArray::kExpAvgSq, optimizer->exp_avg_sq(s), readers,
                      options.chunk_bytes, nullptr);
        }
      }
      if (optimizer != nullptr) optimizer->set_steps_taken(index.optimizer_steps);
      verification->verify_local(source);
    });
    verification->verify_global(source);
  } catch (...) {
    if (verification) verification->poison();
    throw;
  }
  return index;
}

}  // namespace fsdp::checkpoint
