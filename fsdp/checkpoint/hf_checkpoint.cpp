#include "fsdp/checkpoint/hf_checkpoint.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <fstream>
#include <set>

#include "fsdp/checkpoint/checkpoint_error.h"
#include "fsdp/checkpoint/checkpoint_format.h"
#include "fsdp/checkpoint/checkpoint_index.h"
#include "fsdp/checkpoint/file_io.h"
#include "fsdp/checkpoint/json_input.h"

namespace fsdp::checkpoint {
namespace {

// A key from a file, cut for messages (a hostile index makes keys of any length).
std::string shown_key(const std::string& key) {
  return key.size() <= 80 ? key : key.substr(0, 77) + "...";
}

}  // namespace

std::map<std::string, std::vector<std::string>> parse_hf_weight_map(std::string_view text,
                                                                    const std::string& source) {
  const auto index = parse_untrusted_json(text, source);
  const auto weight_map = index.is_object() ? index.find("weight_map") : index.end();
  if (!index.is_object() || weight_map == index.end() || !weight_map->is_object()) {
    throw CheckpointError(source + ": expected an object with a \"weight_map\" object");
  }
  std::map<std::string, std::vector<std::string>> keys_by_file;
  for (const auto& [key, file] : weight_map->items()) {
    if (!file.is_string()) {
      throw CheckpointError(source + ": weight_map entry \"" + shown_key(key) +
                            "\" must be a file name, not " + json_excerpt(file));
    }
    keys_by_file[file.get<std::string>()].push_back(key);
  }
  return keys_by_file;
}

HfCheckpoint::HfCheckpoint(const std::filesystem::path& path) {
  std::error_code error;
  if (!std::filesystem::exists(path, error)) {
    throw CheckpointError(path.string() + ": no such file or directory");
  }
  if (!std::filesystem::is_directory(path, error)) {
    source_ = path.string();
    open_file(path);
    return;
  }
  const auto index_path = path / kHfIndexFileName;
  if (std::filesystem::exists(index_path, error)) {
    source_ = index_path.string();
    const auto keys_by_file = parse_hf_weight_map(read_untrusted_json_text(index_path), source_);
    for (const auto& [file_name, keys] : keys_by_file) {
      const auto file_path = file_inside(
          path, file_name, source_ + ": weight_map entry \"" + shown_key(keys.front()) + "\"",
          /*hf_cache_layout=*/true);
      if (!std::filesystem::exists(file_path, error)) {
        throw CheckpointError(source_ + ": weight_map puts \"" + shown_key(keys.front()) +
                              "\" in " + file_name + ", but " + file_path.string() +
                              " does not exist");
      }
      const std::size_t before = files_.size();
      open_file(file_path);
      for (const auto& key : keys) {
        if (files_[before]->header().find(key) == nullptr) {
          throw CheckpointError(source_ + ": weight_map puts \"" + shown_key(key) + "\" in " +
                                file_name + ", but that file has no such tensor");
        }
      }
    }
    return;
  }
  const auto single = path / kHfSingleFileName;
  if (std::filesystem::exists(single, error)) {
    source_ = single.string();
    open_file(single);
    return;
  }
  std::vector<std::filesystem::path> found;
  bool rank_files = false;
  for (const auto& entry : std::filesystem::directory_iterator(path)) {
    if (entry.path().extension() == ".safetensors") found.push_back(entry.path());
    rank_files = rank_files || is_rank_file_name(entry.path().filename().string());
  }
  // The runtime's own checkpoint without its index is not an HF directory:
  // reading its shards as HF tensors would only produce nonsense errors.
  if (rank_files) {
    throw CheckpointError(path.string() +
                          " holds the rank files of a distributed checkpoint but no " +
                          kCheckpointIndexFileName +
                          " (an interrupted save? the previous one may "
                          "be at " +
                          path.string() + ".previous)");
  }
  if (found.empty()) {
    throw CheckpointError(path.string() + ": no " + std::string(kHfIndexFileName) + ", no " +
                          std::string(kHfSingleFileName) + " and no *.safetensors file");
  }
  std::sort(found.begin(), found.end());
  source_ = path.string();
  for (const auto& file : found) open_file(file);
}

void HfCheckpoint::open_file(const std::filesystem::path& file) {
  files_.push_back(std::make_unique<SafetensorsFile>(file));
  const auto* opened = files_.back().get();
  for (const auto& entry : opened->tensors()) {
    const auto [where, inserted] = tensors_.emplace(entry.name, LocatedTensor{opened, &entry});
    if (!inserted) {
      throw CheckpointError(source_ + ": tensor \"" + entry.name + "\" is stored twice, in " +
                            where->second.file->path() + " and in " + opened->path());
    }
  }
}

const LocatedTensor* HfCheckpoint::find(std::string_view key) const {
  const auto where = tensors_.find(key);
  return where == tensors_.end() ? nullptr : &where->second;
}

std::vector<std::string> HfCheckpoint::keys() const {
  std::vector<std::string> names;
  for (const auto& [key, located] : tensors_) names.push_back(key);
  return names;
}

std::int64_t HfCheckpoint::tensor_bytes() const {
  std::int64_t total = 0;
  for (const auto& [key, located] : tensors_) total += located.entry->bytes();
  return total;
}

std::int64_t HfCheckpoint::bytes_read() const {
  std::int64_t total = 0;
  for (const auto& file : files_) total += file->bytes_read();
  return total;
}

}  // namespace fsdp::checkpoint
