// A HuggingFace safetensors checkpoint on disk: one file, a directory with
// `model.safetensors`, or a sharded directory described by
// `model.safetensors.index.json` ({"metadata": {...}, "weight_map": {key: file}}).
// Opening reads and validates every file's header and nothing else.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "fsdp/checkpoint/safetensors_file.h"

namespace fsdp::checkpoint {

inline constexpr std::string_view kHfIndexFileName = "model.safetensors.index.json";
inline constexpr std::string_view kHfSingleFileName = "model.safetensors";

// The weight map of an HF index, from the index file's text: the keys each
// file holds, by file name. Touches no file (the names are checked when the
// files are opened). Throws CheckpointError starting with `source` when the
// text is not JSON (parse_untrusted_json), is not an object with a
// "weight_map" object, or maps a key to anything but a string.
std::map<std::string, std::vector<std::string>> parse_hf_weight_map(std::string_view text,
                                                                    const std::string& source);

struct LocatedTensor {
  const SafetensorsFile* file = nullptr;
  const TensorEntry* entry = nullptr;
};

class HfCheckpoint {
 public:
  // `path`: a .safetensors file, or a directory holding the index, or
  // model.safetensors, or (without either) any *.safetensors files.
  // Throws CheckpointError naming the file for: a missing path, no
  // safetensors files, an unreadable or invalid index, an index entry whose
  // file is missing or lacks the key, a key stored in two files, or any
  // file's invalid header.
  explicit HfCheckpoint(const std::filesystem::path& path);

  // Where tensors are looked up, for messages: the index file, or the single file.
  const std::string& source() const { return source_; }
  // The tensor `key`, or null.
  const LocatedTensor* find(std::string_view key) const;
  // Every key, sorted.
  std::vector<std::string> keys() const;
  const std::vector<std::unique_ptr<SafetensorsFile>>& files() const { return files_; }

  // Sum of every tensor's data bytes.
  std::int64_t tensor_bytes() const;
  // Bytes read from every file so far (headers included).
  std::int64_t bytes_read() const;

 private:
  void open_file(const std::filesystem::path& file);

  std::string source_;
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::map<std::string, LocatedTensor, std::less<>> tensors_;
};

}  // namespace fsdp::checkpoint
