#include "fsdp/checkpoint/checkpoint_index.h"

#include <algorithm>
#include <cstdio>

#include "fsdp/checkpoint/block_checksums.h"
#include "fsdp/checkpoint/checkpoint_error.h"
#include "fsdp/checkpoint/checkpoint_format.h"
#include "fsdp/checkpoint/checkpoint_series.h"
#include "fsdp/checkpoint/file_io.h"
#include "fsdp/checkpoint/json_input.h"

namespace fsdp::checkpoint {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
namespace key = index_key;

ElementType element_type_named(const std::string& name, const std::string& context) {
  for (auto type :
       {ElementType::kFloat32, ElementType::kFloat64, ElementType::kBFloat16, ElementType::kFloat16,
        ElementType::kInt8, ElementType::kUInt8, ElementType::kInt32, ElementType::kInt64}) {
    if (element_type_name(type) == name) return type;
  }
  throw CheckpointError(context + ": unknown dtype \"" + name + "\"");
}

// --- reading -------------------------------------------------------------------

template <typename T>
T field(const json& object, const char* name, const std::string& context) {
  const auto found = object.find(name);
  if (found == object.end()) throw CheckpointError(context + ": missing field \"" + name + "\"");
  try {
    return found->get<T>();
  } catch (const json::exception& error) {
    throw CheckpointError(context + ": field \"" + name + "\" has the wrong type: " + error.what());
  }
}

// The string `name` of `object`, or "" when either is something else: for
// fields compared with one expected value (json::value() would throw a
// type_error, without the file's name, on a hostile type).
std::string string_or_empty(const json& object, const char* name) {
  if (!object.is_object()) return {};
  const auto found = object.find(name);
  return found != object.end() && found->is_string() ? found->get<std::string>() : std::string();
}

// An integer field inside [minimum, maximum]: JSON numbers are taken on no
// trust (4294967299 must not read as 3, -1 not as a size).
std::int64_t integer_in(const json& value, std::int64_t minimum, std::int64_t maximum,
                        const std::string& what) {
  const bool in_range =
      (value.is_number_unsigned() &&
       value.get<std::uint64_t>() <= static_cast<std::uint64_t>(maximum)) ||
      (value.is_number_integer() && !value.is_number_unsigned() &&
       value.get<std::int64_t>() >= minimum && value.get<std::int64_t>() <= maximum);
  if (!in_range || value.get<std::int64_t>() < minimum) {
    throw CheckpointError(what + " is " + json_excerpt(value) + ", expected an integer from " +
                          std::to_string(minimum) + " to " + std::to_string(maximum));
  }
  return value.get<std::int64_t>();
}

std::int64_t integer(const json& object, const char* name, std::int64_t minimum,
                     std::int64_t maximum, const std::string& context) {
  const auto found = object.find(name);
  if (found == object.end()) throw CheckpointError(context + ": missing field \"" + name + "\"");
  return integer_in(*found, minimum, maximum, context + ": field \"" + name + "\"");
}

std::vector<std::int64_t> integers(const json& object, const char* name, std::int64_t minimum,
                                   std::int64_t maximum, const std::string& context) {
  const auto list = field<json>(object, name, context);
  if (!list.is_array()) {
    throw CheckpointError(context + ": field \"" + name + "\" must be an array of integers");
  }
  std::vector<std::int64_t> values;
  for (const auto& value : list) {
    values.push_back(integer_in(value, minimum, maximum, context + ": field \"" + name + "\""));
  }
  return values;
}

constexpr std::int64_t kMaxCount = std::int64_t{1} << 56;  // elements or bytes: far beyond any disk
constexpr std::int64_t kMaxWorldSize = std::int64_t{1} << 24;

}  // namespace

CheckpointIndex parse_checkpoint_index(std::string_view text, const fs::path& directory,
                                       const std::string& source) {
  const std::string& context = source;
  const json root = parse_untrusted_json(text, source);  // bounded depth
  if (!root.is_object() || string_or_empty(root, key::kFormat) != kCheckpointFormat) {
    throw CheckpointError(context + ": not an " + std::string(kCheckpointFormat) + " index");
  }
  const auto version = integer(root, key::kFormatVersion, 0, 1 << 20, context);
  if (version != kCheckpointFormatVersion) {
    throw CheckpointError(context + ": format version " + std::to_string(version) +
                          ", this build reads version " + std::to_string(kCheckpointFormatVersion));
  }
  CheckpointIndex index;
  index.directory = directory;
  index.world_size = static_cast<int>(integer(root, key::kWorldSize, 1, kMaxWorldSize, context));
  index.step = integer(root, key::kStep, 0, kMaxCount, context);
  index.training_config = root.value(key::kTrainingConfig, json::object());
  index.has_gradients = field<bool>(root, key::kGradients, context);
  index.has_optimizer = field<bool>(root, key::kOptimizer, context);
  index.optimizer_steps = root.contains(key::kOptimizerSteps)
                              ? integer(root, key::kOptimizerSteps, 0, kMaxCount, context)
                              : 0;
  if (index.world_size < 1) throw CheckpointError(context + ": world_size must be at least 1");
  for (const auto& stage : field<json>(root, key::kStages, context)) {
    StageRecord record;
    record.name = field<std::string>(stage, key::kName, context);
    const std::string stage_context = context + ": stage \"" + record.name + "\"";
    record.shard_dtype = field<std::string>(stage, key::kShardDtype, stage_context);
    record.unpadded_numel = integer(stage, key::kUnpaddedNumel, 0, kMaxCount, stage_context);
    record.shard_numel = integer(stage, key::kShardNumel, 0, kMaxCount, stage_context);
    // Divided, not multiplied: 2^56 elements times 2^24 ranks overflows
    // int64 (undefined behaviour, found by the fuzzer's sanitizers).
    const std::int64_t needed_per_rank =
        (record.unpadded_numel + index.world_size - 1) / index.world_size;
    if (record.shard_numel < needed_per_rank) {
      throw CheckpointError(stage_context + ": " + std::to_string(index.world_size) +
                            " shards of " + std::to_string(record.shard_numel) +
                            " elements cannot hold " + std::to_string(record.unpadded_numel));
    }
    // Readers compute rank * shard_numel: all shards together stay below kMaxCount.
    if (record.shard_numel > kMaxCount / index.world_size) {
      throw CheckpointError(stage_context + ": " + std::to_string(index.world_size) +
                            " shards of " + std::to_string(record.shard_numel) +
                            " elements are more than any checkpoint holds (at most " +
                            std::to_string(kMaxCount) + " in all)");
    }
    for (const auto& parameter : field<json>(stage, key::kParameters, stage_context)) {
      ParameterSpec spec;
      spec.name = field<std::string>(parameter, key::kName, stage_context);
      spec.shape = integers(parameter, key::kShape, 0, kMaxCount, stage_context);
      spec.dtype = element_type_named(field<std::string>(parameter, key::kDtype, stage_context),
                                      stage_context + " parameter \"" + spec.name + "\"");
      const auto range =
          integers(parameter, key::kFlatRange, 0, record.unpadded_numel, stage_context);
      if (range.size() != 2 || range[0] > range[1]) {
        throw CheckpointError(stage_context + ": parameter \"" + spec.name +
                              "\": flat_range must be [begin, end] with begin <= end <= "
                              "unpadded_numel " +
                              std::to_string(record.unpadded_numel));
      }
      record.parameters.push_back(std::move(spec));
      record.flat_ranges.push_back({range[0], range[1]});
    }
    index.stages.push_back(std::move(record));
  }
  for (const auto& file : field<json>(root, key::kFiles, context)) {
    FileRecord record;
    record.name = field<std::string>(file, key::kName, context);
    // The name is fixed by the rank: an index cannot point a reader at a file
    // outside the checkpoint directory ("../x", "/etc/passwd") or at another rank's.
    const int rank = static_cast<int>(index.files.size());
    const std::string expected_name = rank_file_name(rank, index.world_size);
    if (record.name != expected_name) {
      throw CheckpointError(context + ": file " + std::to_string(rank) + " is named \"" +
                            record.name.substr(0, 80) + (record.name.size() > 80 ? "..." : "") +
                            "\"; rank " + std::to_string(rank) + "'s file must be \"" +
                            expected_name + "\", in the checkpoint directory");
    }
    const auto recorded_rank = file.find(key::kRank);
    if (recorded_rank != file.end() && *recorded_rank != rank) {
      throw CheckpointError(context + ": file " + std::to_string(rank) + " (\"" + record.name +
                            "\") says rank " + json_excerpt(*recorded_rank) +
                            "; the files must be listed in rank order");
    }
    record.rank = rank;
    record.world_size = index.world_size;
    record.bytes = integer(file, key::kBytes, 0, kMaxCount, context + ": file " + record.name);
    const auto checksum = field<json>(file, key::kChecksum, context + ": file " + record.name);
    if (string_or_empty(checksum, key::kAlgorithm) != kChecksumAlgorithm) {
      throw CheckpointError(context + ": file " + record.name + ": checksum algorithm must be " +
                            kChecksumAlgorithm);
    }
    record.checksum_block_bytes =
        integer(checksum, key::kBlockBytes, 1, kMaxCount, context + ": file " + record.name);
    for (const auto& block : field<std::vector<std::string>>(checksum, key::kBlocks, context)) {
      record.checksums.push_back(parse_checksum(block, context + ": file " + record.name));
    }
    const auto expected_blocks = record.checksum_block_bytes > 0
                                     ? record.bytes / record.checksum_block_bytes +
                                           (record.bytes % record.checksum_block_bytes != 0 ? 1 : 0)
                                     : -1;
    if (expected_blocks != static_cast<std::int64_t>(record.checksums.size())) {
      throw CheckpointError(context + ": file " + record.name + " of " +
                            std::to_string(record.bytes) + " bytes needs " +
                            std::to_string(expected_blocks) + " checksum blocks, the index has " +
                            std::to_string(record.checksums.size()));
    }
    index.files.push_back(std::move(record));
  }
  if (static_cast<int>(index.files.size()) != index.world_size) {
    throw CheckpointError(context + ": world_size is " + std::to_string(index.world_size) +
                          " but " + std::to_string(index.files.size()) + " files are listed");
  }
  return index;
}

bool is_rank_file_name(const std::string& name) {
  // rank-RRRRR-of-WWWWW.safetensors
  static const std::string kPrefix = "rank-", kMiddle = "-of-", kSuffix = ".safetensors";
  const auto digits = [&](std::size_t at) {
    return name.size() >= at + 5 && std::all_of(name.begin() + static_cast<std::ptrdiff_t>(at),
                                                name.begin() + static_cast<std::ptrdiff_t>(at + 5),
                                                [](char c) { return c >= '0' && c <= '9'; });
  };
  return name.size() == kPrefix.size() + 5 + kMiddle.size() + 5 + kSuffix.size() &&
         name.compare(0, kPrefix.size(), kPrefix) == 0 && digits(kPrefix.size()) &&
         name.compare(kPrefix.size() + 5, kMiddle.size(), kMiddle) == 0 &&
         digits(kPrefix.size() + 5 + kMiddle.size()) &&
         name.compare(name.size() - kSuffix.size(), kSuffix.size(), kSuffix) == 0;
}

std::string rank_file_name(int rank, int world_size) {
  char name[64];
  std::snprintf(name, sizeof name, "rank-%05d-of-%05d.safetensors", rank, world_size);
  return name;
}

void check_save_directory(const fs::path& requested) {
  const auto directory = resolve_directory_link(requested);
  std::error_code error;
  if (!fs::exists(directory, error)) return;
  if (!fs::is_directory(directory, error)) {
    throw CheckpointError(directory.string() + " exists and is not a directory");
  }
  std::vector<std::string> foreign;
  for (const auto& name : directory_entries(directory)) {
    if (name != kCheckpointIndexFileName && !is_rank_file_name(name)) foreign.push_back(name);
  }
  refuse_to_lose(directory, foreign, "move them out, or save the checkpoint elsewhere");
  // Only rank files: an interrupted save of someone's checkpoint, not ours to replace.
  if (!fs::exists(directory / kCheckpointIndexFileName, error) && !fs::is_empty(directory, error)) {
    throw CheckpointError(directory.string() + " exists and is not a checkpoint (no " +
                          kCheckpointIndexFileName + "); refusing to replace it");
  }
}

fs::path previous_checkpoint_path(const fs::path& directory) {
  return directory.string() + ".previous";
}

namespace {

CheckpointIndex read_index_file(const fs::path& directory) {
  const auto path = directory / kCheckpointIndexFileName;
  std::error_code error;
  if (!fs::exists(fs::symlink_status(path, error))) {
    throw CheckpointError(path.string() + ": cannot open (is " + directory.string() +
                          " a checkpoint saved by this runtime?)");
  }
  // A regular file of bounded size, never a FIFO.
  auto index = parse_checkpoint_index(read_untrusted_json_text(path), directory, path.string());
  // The names are plain rank file names; a link among them must not lead out.
  for (const auto& record : index.files) {
    file_inside(directory, record.name, path.string() + ": file " + std::to_string(record.rank));
  }
  return index;
}

}  // namespace

CheckpointIndex read_checkpoint_index(const fs::path& directory) {
  // A series (--keep-checkpoints): its latest complete checkpoint.
  if (is_checkpoint_series(directory)) return read_index_file(latest_checkpoint(directory));
  std::error_code error;
  if (!fs::exists(directory, error) &&
      fs::exists(previous_checkpoint_path(directory) / kCheckpointIndexFileName, error)) {
    return read_index_file(previous_checkpoint_path(directory));
  }
  if (!fs::is_directory(directory, error)) {
    throw CheckpointError(directory.string() + ": no such checkpoint directory");
  }
  return read_index_file(directory);
}

}  // namespace fsdp::checkpoint
