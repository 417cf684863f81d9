#include "fsdp/launch/inspect/tensor_source.h"

#include <ATen/ATen.h>

#include <memory>
#include <utility>

#include "fsdp/checkpoint/checkpoint_error.h"
#include "fsdp/checkpoint/checkpoint_series.h"
#include "fsdp/checkpoint/element_conversion.h"

namespace fsdp::inspect {
namespace {

namespace fs = std::filesystem;
using checkpoint::CheckpointError;
using checkpoint::ShardArray;

class DistributedSource : public TensorSource {
 public:
  DistributedSource(const fs::path& path, ShardArray array)
      : DistributedSource(path, std::make_unique<checkpoint::CheckpointReader>(path), array) {}

  SourceKind kind() const override { return SourceKind::kDistributedCheckpoint; }
  checkpoint::CheckpointReader* distributed() override { return reader_.get(); }

  at::Tensor read(std::size_t index, ElementRange elements) override {
    return reader_->read(locations_.at(index), elements, array());
  }

 private:
  DistributedSource(const fs::path& path, std::unique_ptr<checkpoint::CheckpointReader> reader,
                    ShardArray array)
      : TensorSource(path.string(), reader->source(), array), reader_(std::move(reader)) {
    if (!reader_->has(array)) {
      throw CheckpointError(
          reader_->source() + ": the checkpoint has no " +
          std::string(checkpoint::shard_array_name(array)) + " arrays (saved " +
          (array == ShardArray::kGradients ? "without gradients" : "without optimizer state") +
          ")");
    }
    for (const auto& location : reader_->parameters()) {
      const auto& spec = reader_->parameter(location);
      const auto& stage = reader_->stage(location);
      locations_.push_back(location);
      tensors_.push_back({spec.name, spec.shape, reader_->numel(location), stage.shard_dtype,
                          std::string(element_type_name(spec.dtype)), stage.name});
    }
  }

  std::unique_ptr<checkpoint::CheckpointReader> reader_;
  std::vector<checkpoint::ParameterLocation> locations_;  // by tensor index
};

class HfSource : public TensorSource {
 public:
  explicit HfSource(const fs::path& path)
      : HfSource(path, std::make_unique<checkpoint::HfCheckpoint>(path)) {}

  SourceKind kind() const override { return SourceKind::kHfCheckpoint; }
  const checkpoint::HfCheckpoint* hf() const override { return checkpoint_.get(); }

  at::Tensor read(std::size_t index, ElementRange elements) override {
    const auto& info = tensors_.at(index);
    const auto& located = *checkpoint_->find(info.name);
    const auto& entry = *located.entry;
    if (elements.begin < 0 || elements.end < elements.begin || elements.end > entry.numel()) {
      throw CheckpointError(located.file->path() + ": elements [" + std::to_string(elements.begin) +
                            ", " + std::to_string(elements.end) + ") of tensor \"" + info.name +
                            "\", which has " + std::to_string(entry.numel()));
    }
    const std::int64_t element_bytes = checkpoint::dtype_size(entry.dtype);
    const std::int64_t offset = elements.begin * element_bytes;
    const std::int64_t bytes = elements.size() * element_bytes;
    if (const auto type = checkpoint::scalar_type_of(entry.dtype)) {
      // Safetensors data is little-endian, as is every host this runs on.
      auto values = at::empty({elements.size()}, at::TensorOptions().dtype(*type));
      located.file->read_tensor_bytes(entry, offset, values.data_ptr(), bytes);
      return values;
    }
    if (!checkpoint::is_floating_point(entry.dtype)) {
      throw CheckpointError(located.file->path() + ": tensor \"" + info.name + "\" is " +
                            std::string(checkpoint::dtype_name(entry.dtype)) +
                            ", which libtorch cannot hold; shard-inspect cannot show it");
    }
    // float8: decoded exactly into float32.
    std::unique_ptr<char[]> raw(new char[static_cast<std::size_t>(bytes)]);
    located.file->read_tensor_bytes(entry, offset, raw.get(), bytes);
    auto values = at::empty({elements.size()}, at::kFloat);
    checkpoint::convert_elements(raw.get(), entry.dtype, values.data_ptr(), at::kFloat,
                                 elements.size());
    return values;
  }

 private:
  HfSource(const fs::path& path, std::unique_ptr<checkpoint::HfCheckpoint> hf)
      : TensorSource(path.string(), hf->source(), ShardArray::kWeights),
        checkpoint_(std::move(hf)) {
    for (const auto& key : checkpoint_->keys()) {
      const auto& located = *checkpoint_->find(key);
      const std::string dtype(checkpoint::dtype_name(located.entry->dtype));
      tensors_.push_back({key, located.entry->shape, located.entry->numel(), dtype, dtype,
                          fs::path(located.file->path()).filename().string()});
    }
  }

  std::unique_ptr<checkpoint::HfCheckpoint> checkpoint_;
};

}  // namespace

std::unique_ptr<TensorSource> TensorSource::open(const fs::path& path, ShardArray array) {
  std::error_code error;
  const bool exists = fs::exists(path, error);
  if (fs::exists(path / checkpoint::kCheckpointIndexFileName, error) ||
      checkpoint::is_checkpoint_series(path) ||
      (!exists &&
       fs::exists(fs::path(path.string() + ".previous") / checkpoint::kCheckpointIndexFileName,
                  error))) {
    return std::make_unique<DistributedSource>(path, array);
  }
  if (!exists) throw CheckpointError(path.string() + ": no such file or directory");
  if (array != ShardArray::kWeights) {
    throw CheckpointError(path.string() + ": an HF checkpoint holds weights only, not " +
                          std::string(checkpoint::shard_array_name(array)));
  }
  return std::make_unique<HfSource>(path);
}

std::optional<std::size_t> TensorSource::lookup(std::string_view name) const {
  if (by_name_.empty()) {
    for (std::size_t i = 0; i < tensors_.size(); ++i) by_name_.emplace(tensors_[i].name, i);
  }
  const auto found = by_name_.find(name);
  if (found == by_name_.end()) return std::nullopt;
  return found->second;
}

std::size_t TensorSource::find(std::string_view name) const {
  if (const auto index = lookup(name)) return *index;
  std::vector<std::string> names;
  for (const auto& tensor : tensors_) names.push_back(tensor.name);
  std::string close;
  for (const auto& candidate : checkpoint::close_names(name, names)) {
    close += (close.empty() ? "" : ", ") + candidate;
  }
  const bool runtime = kind() == SourceKind::kDistributedCheckpoint;
  throw CheckpointError(message_source_ + ": no " + (runtime ? "parameter" : "tensor") +
                        " named '" + std::string(name) + "' (" + std::to_string(names.size()) +
                        (runtime ? " parameters" : " tensors") +
                        (close.empty() ? "" : "; close names: " + close) + ")");
}

}  // namespace fsdp::inspect
