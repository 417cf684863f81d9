// The `load` case of fsdp-bench: importing a HuggingFace checkpoint into the
// shards (checkpoint::import_hf_checkpoint) beside a raw sequential read of
// the same files, in one run.
//
// The checkpoint is generated first: a Llama with MoE experts (about 1 GB of
// float32 by default), initialised and written by checkpoint::export_hf_checkpoint
// as transformers 5 stores it (one tensor per expert, files of at most
// max_file_bytes). Nothing is dropped from the page cache (that needs root):
// both reads run on a warm cache, so they measure the loader's CPU and memory
// traffic, not the disk.
//
//   raw:  the ranks together read every *.safetensors file once: rank r reads
//         the r-th contiguous 1/N of their concatenated bytes, sequentially, with
//         pread in chunks of read_chunk_bytes into one reused buffer.
//   ours: import_hf_checkpoint into a model built like the one exported
//         (ZeRO-3, one layer per stage, 2 shared weight and 2 shared gradient
//         buffers, so that a rank holds its shards plus 2 + 2 stage buffers).
//
// Both are timed as the slowest rank (time_collectively), alternately, and
// the medians are kept. Memory: the peak RSS during the first import above the
// RSS just before it (the model's shards and buffers already allocated), that
// is what the loader adds on top of the model.
#pragma once

#include <cstdint>
#include <filesystem>

#include "fsdp/launch/runtime.h"
#include "fsdp/models/llama.h"

namespace fsdp::bench {

struct LoadBenchOptions {
  // The model: hidden, 2 x hidden intermediate per expert, `experts` experts
  // in each of `layers` blocks. The defaults make about 1 GB of float32.
  std::int64_t hidden = 512;
  std::int64_t experts = 16;
  std::int64_t layers = 10;
  std::int64_t vocabulary = 4096;
  // How the experts are named and split on disk: Qwen3-MoE's
  // mlp.experts.{e}.{gate,up,down}_proj, or Mixtral's
  // block_sparse_moe.experts.{e}.{w1,w3,w2} (also in several files).
  models::HfExpertNaming layout = models::HfExpertNaming::kQwen;
  int iterations = 3;  // timed imports and raw reads each, after one untimed round
  // The checkpoint goes to parent_directory/fsdp-bench-load-<rank 0's pid>,
  // removed at the end. Every rank must see it (a shared file system across hosts).
  std::filesystem::path parent_directory = std::filesystem::temp_directory_path();
  std::int64_t max_file_bytes = 256'000'000;
  // The raw read's chunk: import_hf_checkpoint's default staging chunk.
  std::int64_t read_chunk_bytes = std::int64_t{64} << 20;
};

struct LoadBenchResult {
  int ranks = 0;
  int files = 0;
  std::int64_t checkpoint_bytes = 0;      // tensor data (LoadReport::checkpoint_bytes)
  std::int64_t file_bytes = 0;            // the files' sizes, headers included: what raw reads
  std::int64_t bytes_read_all_ranks = 0;  // by the import, summed over ranks, headers included
  double time_seconds = 0;                // import, median of the slowest rank
  double raw_time_seconds = 0;            // raw read, median of the slowest rank
  // Memory, each the largest over ranks. The shard is the weight shard only.
  std::int64_t shard_bytes = 0;
  std::int64_t load_overhead_bytes = 0;  // peak RSS during the import - RSS before it
  double rss_ratio = 0;                  // (shard + overhead) / shard

  // Decimal GB/s: checkpoint bytes / import time; file bytes / raw time.
  double gbps() const { return checkpoint_bytes / time_seconds / 1e9; }
  double raw_gbps() const { return file_bytes / raw_time_seconds / 1e9; }
  // raw time / import time (1.0 = as fast as reading the files).
  double ratio() const { return raw_time_seconds / time_seconds; }
  // 1.0 = every checkpoint byte read once, by one rank.
  double bytes_read_ratio() const {
    return static_cast<double>(bytes_read_all_ranks) / checkpoint_bytes;
  }
};

// Collective. Throws std::invalid_argument for fewer than 1 iteration or a
// configuration the model rejects, std::runtime_error where the kernel cannot reset the peak RSS
// (/proc/self/clear_refs, Linux >= 4.0), and what export or import throw.
LoadBenchResult run_load_bench(launch::Runtime& runtime, const LoadBenchOptions& options);

}  // namespace fsdp::bench
