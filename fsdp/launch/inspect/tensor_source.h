// What shard-inspect reads: a distributed checkpoint (a directory whose
// index.json is an fsdp-runtime-checkpoint index) or an HF safetensors
// checkpoint (a .safetensors file, or a directory of them), seen as a list of
// named tensors that can be read by element ranges.
//
// For a distributed checkpoint the tensors are the runtime parameters, read
// from the rank files through checkpoint::CheckpointReader (every block's
// checksum verified); for an HF checkpoint they are its keys, read as stored.
// Nothing here starts MPI or touches a GPU.
#pragma once

#include <ATen/core/Tensor.h>

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "fsdp/checkpoint/checkpoint_reader.h"
#include "fsdp/checkpoint/hf_checkpoint.h"

namespace fsdp::inspect {

enum class SourceKind { kDistributedCheckpoint, kHfCheckpoint };

// One tensor of a source.
struct TensorInfo {
  std::string name;
  std::vector<std::int64_t> shape;
  std::int64_t numel = 0;
  // The dtype of the stored values: the stage's shard dtype ("float32") for a
  // distributed checkpoint, the file's dtype ("BF16") for HF.
  std::string dtype;
  // The parameter's declared dtype (distributed checkpoints; equal to dtype for HF).
  std::string declared_dtype;
  // The stage holding the parameter, or the HF file holding the key.
  std::string group;
};

class TensorSource {
 public:
  // Opens `path`: a distributed checkpoint when `path`/index.json exists (or
  // `path`.previous/index.json, as read_checkpoint_index does), otherwise an
  // HF checkpoint. `array` says which per-stage array of a distributed
  // checkpoint is read; an HF checkpoint has weights only.
  // Throws checkpoint::CheckpointError naming the file: a missing path, an
  // invalid index or header, an array the checkpoint does not hold.
  static std::unique_ptr<TensorSource> open(
      const std::filesystem::path& path,
      checkpoint::ShardArray array = checkpoint::ShardArray::kWeights);
  virtual ~TensorSource() = default;

  virtual SourceKind kind() const = 0;
  // The path as given, for messages and headers.
  const std::string& path() const { return path_; }
  // The per-stage array read (always the weights for HF).
  checkpoint::ShardArray array() const { return array_; }
  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  std::optional<std::size_t> lookup(std::string_view name) const;
  // Throws checkpoint::CheckpointError naming `name` and listing a few close names.
  std::size_t find(std::string_view name) const;

  // Elements `elements` of tensor `index`, flattened, as a 1-D CPU tensor of
  // the stored type (float8, which libtorch 1.13 lacks, decoded to float32).
  // Throws checkpoint::CheckpointError naming the file for unreadable or
  // corrupt data and for a range outside the tensor.
  virtual at::Tensor read(std::size_t index, ElementRange elements) = 0;

  // The underlying checkpoint: exactly one is not null, as kind() says.
  virtual checkpoint::CheckpointReader* distributed() { return nullptr; }
  virtual const checkpoint::HfCheckpoint* hf() const { return nullptr; }

 protected:
  TensorSource(std::string path, std::string message_source, checkpoint::ShardArray array)
      : path_(std::move(path)), message_source_(std::move(message_source)), array_(array) {}
  std::vector<TensorInfo> tensors_;

 private:
  std::string path_;
  std::string message_source_;  // the file named in messages (index.json, the HF index)
  checkpoint::ShardArray array_;
  mutable std::map<std::string, std::size_t, std::less<>> by_name_;  // built on first lookup
};

// Reads tensor `index` of `source` in chunks of at most `chunk_elements`,
// calling visit(first_element, values) for each, in order.
template <typename Visit>
void for_each_chunk(TensorSource& source, std::size_t index, std::int64_t chunk_elements,
                    Visit&& visit) {
  const std::int64_t numel = source.tensors().at(index).numel;
  const std::int64_t chunk = std::max<std::int64_t>(1, chunk_elements);
  for (std::int64_t first = 0; first < numel; first += chunk) {
    const std::int64_t last = std::min(numel, first + chunk);
    visit(first, source.read(index, {first, last}));
  }
}

}  // namespace fsdp::inspect
