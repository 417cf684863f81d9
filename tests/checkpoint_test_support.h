// Helpers shared by the multi-rank checkpoint tests.
#pragma once

#include <ATen/ATen.h>
#include <mpi.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "fsdp/checkpoint/element_conversion.h"
#include "fsdp/checkpoint/hf_checkpoint.h"
#include "fsdp/checkpoint/safetensors_file.h"
#include "fsdp/inspector.h"
#include "fsdp/models/llama.h"
#include "fsdp/mpi_process_group.h"
#include "fsdp/stages/multi_stage_model.h"
#include "fsdp/torch_interop.h"

namespace fsdp::testing {

namespace fs = std::filesystem;

// A directory every rank of `group` agrees on (rank 0's pid), created empty;
// removed by the last owner.
class SharedDirectory {
 public:
  SharedDirectory(ProcessGroup& group, const std::string& name) : group_(group) {
    auto pid = at::full({1}, static_cast<std::int64_t>(::getpid()), at::kLong);
    group.broadcast(span_of(pid), 0);
    path_ = fs::temp_directory_path() / (name + "_" + std::to_string(pid.item<std::int64_t>()) +
                                         "_np" + std::to_string(group.size()));
    if (group.rank() == 0) {
      fs::remove_all(path_);
      fs::create_directories(path_);
    }
    group.barrier();
  }
  ~SharedDirectory() {
    try {
      group_.barrier();
      if (group_.rank() == 0) fs::remove_all(path_);
    } catch (...) {
    }
  }
  const fs::path& path() const { return path_; }
  fs::path operator/(const std::string& name) const { return path_ / name; }

 private:
  ProcessGroup& group_;
  fs::path path_;
};

// The first `ranks` ranks of the job as a group of their own (null on the
// others): a second world size inside one mpirun. Collective over MPI_COMM_WORLD.
inline std::shared_ptr<ProcessGroup> first_ranks(int ranks) {
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm communicator = MPI_COMM_NULL;
  MPI_Comm_split(MPI_COMM_WORLD, rank < ranks ? 0 : MPI_UNDEFINED, rank, &communicator);
  if (communicator == MPI_COMM_NULL) return nullptr;
  auto group = std::make_shared<MpiProcessGroup>(communicator, std::chrono::seconds(60));
  MPI_Comm_free(&communicator);  // the group holds its own duplicate
  return group;
}

inline models::LlamaConfig small_llama(std::int64_t experts = 0, bool tied = false,
                                       bool stacked = false, std::int64_t layers = 2) {
  models::LlamaConfig config;
  config.vocabulary = 48;
  config.hidden = 16;
  config.heads = 2;
  config.intermediate = 24;
  config.layers = layers;
  config.max_sequence = 16;
  config.experts = experts;
  config.tie_embeddings = tied;
  config.stacked_layers = stacked;
  return config;
}

inline std::unique_ptr<stages::MultiStageModel> build_model(const models::LlamaConfig& config,
                                                            std::shared_ptr<ProcessGroup> group,
                                                            int layers_per_stage = 1) {
  stages::MultiStageOptions options;
  options.layers_per_stage = layers_per_stage;
  return std::make_unique<stages::MultiStageModel>(models::build_llama_layers(config),
                                                   std::move(group), options);
}

// Every parameter's true value (inspector), by name. Collective.
inline std::map<std::string, at::Tensor> all_parameters(stages::MultiStageModel& model) {
  std::map<std::string, at::Tensor> values;
  for (auto* stage : model.stages()) {
    for (const auto& slot : stage->layout().parameters())
      values[slot.name] = read_parameter(*stage, slot.name);
  }
  return values;
}

// Tensor `name` of a safetensors file, read whole in its stored dtype.
inline at::Tensor read_safetensors_tensor(const checkpoint::SafetensorsFile& file,
                                          const std::string& name) {
  const auto& entry = file.tensor(name);
  auto tensor =
      at::empty(entry.shape, at::TensorOptions().dtype(*checkpoint::scalar_type_of(entry.dtype)));
  file.read_tensor_bytes(entry, 0, tensor.data_ptr(), entry.bytes());
  return tensor;
}

// Every tensor of an HF checkpoint, read whole (small test files only).
inline std::map<std::string, at::Tensor> read_hf_tensors(const fs::path& path) {
  checkpoint::HfCheckpoint hf(path);
  std::map<std::string, at::Tensor> tensors;
  for (const auto& key : hf.keys()) {
    tensors[key] = read_safetensors_tensor(*hf.find(key)->file, key);
  }
  return tensors;
}

// Writes `tensors` (contiguous CPU) as one safetensors file.
inline void write_hf_file(const fs::path& path, const std::map<std::string, at::Tensor>& tensors) {
  std::vector<checkpoint::TensorDeclaration> declarations;
  for (const auto& [name, tensor] : tensors) {
    declarations.push_back(
        {name, checkpoint::safetensors_dtype_of(tensor.scalar_type()), tensor.sizes().vec()});
  }
  checkpoint::SafetensorsWriter writer(path, declarations);
  for (const auto& entry : writer.tensors_in_file_order()) {
    const auto tensor = tensors.at(entry.name).contiguous();
    writer.append(tensor.data_ptr(), entry.bytes());
  }
  writer.finish();
}

inline std::string file_bytes(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

// Runs `body` expecting every rank to throw an error whose message contains each of `parts`.
template <typename Body>
void expect_error_on_every_rank(Body&& body, const std::vector<std::string>& parts) {
  try {
    body();
    ADD_FAILURE() << "no error; expected one containing \"" << parts.front() << "\"";
  } catch (const std::exception& error) {
    const std::string message = error.what();
    for (const auto& part : parts) {
      EXPECT_NE(message.find(part), std::string::npos)
          << "expected \"" << part << "\" in: " << message;
    }
  }
}

}  // namespace fsdp::testing
