#include "bench/load_bench.h"

#include "bench/timing.h"

#include <fcntl.h>
#include <mpi.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <string>
#include <system_error>
#include <vector>

#include "fsdp/checkpoint/hf_export.h"
#include "fsdp/checkpoint/hf_import.h"
#include "fsdp/launch/process_memory.h"
#include "fsdp/models/llama.h"
#include "fsdp/models/llama_conversion.h"
#include "fsdp/stages/multi_stage_model.h"

namespace fsdp::bench {
namespace {

namespace fs = std::filesystem;

models::LlamaConfig llama_config(const LoadBenchOptions& options) {
  models::LlamaConfig config;
  config.vocabulary = options.vocabulary;
  config.hidden = options.hidden;
  config.heads = 8;
  config.intermediate = 2 * options.hidden;
  config.layers = options.layers;
  config.experts = options.experts;
  config.expert_naming = options.layout;
  return config;
}

// ZeRO-3 with one layer per stage and 2 + 2 shared buffers: a rank holds its
// shards plus four stage buffers, not the whole model's weights and
// gradients, so that the RSS figure is about the shards.
std::unique_ptr<stages::MultiStageModel> build_model(const models::LlamaConfig& config,
                                                     launch::Runtime& runtime) {
  stages::MultiStageOptions options;
  options.layers_per_stage = 1;
  options.zero_stage = 3;
  options.shared_weight_buffers = 2;
  options.shared_gradient_buffers = 2;
  return std::make_unique<stages::MultiStageModel>(models::build_llama_layers(config),
                                                   runtime.process_group(), options);
}

// This rank's weight shards (gradient shards and buffers not counted).
std::int64_t weight_shard_bytes(stages::MultiStageModel& model) {
  std::int64_t bytes = 0;
  for (const Fsdp* stage : model.stages()) {
    bytes += stage->layout().shard_numel() *
             static_cast<std::int64_t>(stage->weight_shard().element_size());
  }
  return bytes;
}

// The generated checkpoint's directory, named by rank 0's pid so that every
// rank agrees on it. Rank 0 removes it on destruction, also when the bench
// throws (the job is ending then).
// REQUIRES: every rank is done reading it before rank 0 destroys it.
class ScratchDirectory {
 public:
  ScratchDirectory(const fs::path& parent, int rank, MPI_Comm world) : rank_(rank) {
    long long pid = ::getpid();
    MPI_Bcast(&pid, 1, MPI_LONG_LONG, 0, world);
    path_ = parent / ("fsdp-bench-load-" + std::to_string(pid));
  }
  ScratchDirectory(const ScratchDirectory&) = delete;
  ScratchDirectory& operator=(const ScratchDirectory&) = delete;
  ~ScratchDirectory() {
    std::error_code ignored;  // nothing to do about a failed clean-up in a destructor
    if (rank_ == 0) fs::remove_all(path_, ignored);
  }
  const fs::path& path() const { return path_; }

 private:
  int rank_;
  fs::path path_;
};

// Collective: a model like the one imported into, initialised, exported.
void generate_checkpoint(const fs::path& directory, const models::LlamaConfig& config,
                         const checkpoint::ConversionRules& rules, launch::Runtime& runtime,
                         const LoadBenchOptions& options) {
  auto model = build_model(config, runtime);
  model->initialize_weights(1);
  checkpoint::ExportOptions export_options;
  export_options.max_file_bytes = options.max_file_bytes;
  checkpoint::export_hf_checkpoint(directory, rules, model->stages(), export_options);
}

struct CheckpointFile {
  fs::path path;
  std::int64_t size = 0;
};

// Every *.safetensors file of `directory`, in name order (the index is a few
// KB of JSON and is left out).
std::vector<CheckpointFile> list_checkpoint_files(const fs::path& directory) {
  std::vector<CheckpointFile> files;
  for (const auto& entry : fs::directory_iterator(directory)) {
    if (entry.is_regular_file() && entry.path().extension() == ".safetensors") {
      files.push_back({entry.path(), static_cast<std::int64_t>(entry.file_size())});
    }
  }
  std::sort(files.begin(), files.end(),
            [](const CheckpointFile& a, const CheckpointFile& b) { return a.path < b.path; });
  return files;
}

[[noreturn]] void throw_io_error(const std::string& what, const fs::path& path) {
  throw std::runtime_error("load bench: " + what + " " + path.string() + ": " +
                           std::strerror(errno));
}

// Reads bytes [begin, end) of `file` sequentially with pread, `buffer.size()`
// bytes at a time, into `buffer` (overwritten each time).
void read_range(const CheckpointFile& file, std::int64_t begin, std::int64_t end,
                std::vector<char>& buffer) {
  const int descriptor = ::open(file.path.c_str(), O_RDONLY | O_CLOEXEC);
  if (descriptor < 0) throw_io_error("cannot open", file.path);
  for (std::int64_t offset = begin; offset < end;) {
    const auto want = static_cast<std::size_t>(
        std::min<std::int64_t>(end - offset, static_cast<std::int64_t>(buffer.size())));
    const ssize_t got = ::pread(descriptor, buffer.data(), want, offset);
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) {
      if (got == 0) errno = EIO;  // the file ended before its listed size
      ::close(descriptor);
      throw_io_error("cannot read", file.path);
    }
    offset += got;
  }
  ::close(descriptor);
}

// The raw baseline: rank `rank` of `ranks` reads the rank-th contiguous 1/ranks
// of the files' concatenated bytes, so that the ranks together read every
// byte once, each sequentially.
void read_share(const std::vector<CheckpointFile>& files, int rank, int ranks,
                std::vector<char>& buffer) {
  std::int64_t total = 0;
  for (const auto& file : files) total += file.size;
  const std::int64_t begin = total * rank / ranks;
  const std::int64_t end = total * (rank + 1) / ranks;
  std::int64_t file_start = 0;  // of the current file in the concatenation
  for (const auto& file : files) {
    const std::int64_t first = std::max(begin, file_start);
    const std::int64_t last = std::min(end, file_start + file.size);
    if (first < last) read_range(file, first - file_start, last - file_start, buffer);
    file_start += file.size;
  }
}

// How far this process's peak RSS rises above its RSS while `operation` runs.
template <typename Operation>
std::int64_t peak_rss_increase(Operation&& operation) {
  if (!launch::reset_peak_resident_memory()) {
    throw std::runtime_error(
        "load bench: this kernel does not reset the peak RSS through /proc/self/clear_refs; "
        "the memory figure would be meaningless");
  }
  const std::int64_t before = launch::resident_memory().current;
  operation();
  return launch::resident_memory().peak - before;
}

}  // namespace

LoadBenchResult run_load_bench(launch::Runtime& runtime, const LoadBenchOptions& options) {
  if (options.iterations < 1) {
    throw std::invalid_argument("load bench: iterations " + std::to_string(options.iterations) +
                                " (expected at least 1)");
  }
  const MPI_Comm world = runtime.host_group()->communicator();
  const auto config = llama_config(options);
  const auto rules = models::llama_conversion_rules(config);

  ScratchDirectory scratch(options.parent_directory, runtime.rank(), world);
  generate_checkpoint(scratch.path(), config, rules, runtime, options);
  const auto files = list_checkpoint_files(scratch.path());

  // A fresh model, as a program loading a checkpoint would have it; its
  // shards and buffers are allocated (zeroed, so resident) before any import.
  auto model = build_model(config, runtime);
  const std::vector<Fsdp*> stages = model->stages();
  checkpoint::ImportOptions import_options;
  import_options.chunk_bytes = options.read_chunk_bytes;
  checkpoint::LoadReport report;
  auto import = [&] {
    report = checkpoint::import_hf_checkpoint(scratch.path(), rules, stages, import_options);
  };
  std::vector<char> buffer(static_cast<std::size_t>(options.read_chunk_bytes));  // zeroed: resident
  auto raw_read = [&] { read_share(files, runtime.rank(), runtime.world_size(), buffer); };

  // Untimed round: the raw read brings every file into the page cache (the
  // export wrote them, but another process may have pushed them out), and the
  // first import -- the one that touches its memory first -- is measured for memory.
  raw_read();
  std::int64_t overhead = peak_rss_increase(import);

  std::vector<double> times, raw_times;
  for (int i = 0; i < options.iterations; ++i) {
    raw_times.push_back(time_collectively(world, raw_read));
    times.push_back(time_collectively(world, import));
  }

  LoadBenchResult result;
  result.ranks = runtime.world_size();
  result.files = static_cast<int>(files.size());
  result.checkpoint_bytes = report.checkpoint_bytes;
  for (const auto& file : files) result.file_bytes += file.size;
  result.bytes_read_all_ranks = report.bytes_read_all_ranks;
  result.time_seconds = median(times);
  result.raw_time_seconds = median(raw_times);
  std::int64_t shard = weight_shard_bytes(*model);
  double rss_ratio = static_cast<double>(shard + overhead) / shard;
  MPI_Allreduce(MPI_IN_PLACE, &shard, 1, MPI_INT64_T, MPI_MAX, world);
  MPI_Allreduce(MPI_IN_PLACE, &overhead, 1, MPI_INT64_T, MPI_MAX, world);
  MPI_Allreduce(MPI_IN_PLACE, &rss_ratio, 1, MPI_DOUBLE, MPI_MAX, world);
  result.shard_bytes = shard;
  result.load_overhead_bytes = overhead;
  result.rss_ratio = rss_ratio;
  MPI_Barrier(world);  // every rank is done with the files before rank 0 removes them
  return result;
}

}  // namespace fsdp::bench
