// Measured, not assumed: importing an HF checkpoint with 64 experts per
// layer adds at most one staging chunk (plus a fixed allowance) to a rank's
// resident memory, whatever the number of experts: the loader never holds
// an expert set, a layer or a file (fusing experts by first loading every
// routed expert is how loaders elsewhere spike host memory). Bfloat16 on
// disk, so every byte goes through the chunk and a dtype conversion. Runs at
// world size 2, in a process of its own (peak RSS is per process).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <gtest/gtest.h>
#include <malloc.h>

#include "checkpoint_test_support.h"
#include "fsdp/checkpoint/hf_export.h"
#include "fsdp/checkpoint/hf_import.h"
#include "fsdp/launch/process_memory.h"
#include "fsdp/models/llama_conversion.h"
#include "mpi_test_environment.h"

namespace fsdp::testing {
namespace {

constexpr std::int64_t kChunkBytes = std::int64_t{1} << 20;  // each expert tensor is 128 KiB
// The fixed part: the plan and headers, MPI's buffers, the allocator.
constexpr std::int64_t kFixedAllowance = std::int64_t{16} << 20;

TEST(CheckpointMemory, ImportingSixtyFourExpertsAddsAtMostOneChunk) {
  // A fixed mmap threshold: large blocks go back to the system when freed, so
  // memory freed before the measurement cannot hide what the loader allocates.
  mallopt(M_MMAP_THRESHOLD, 64 << 10);
  at::set_num_threads(1);
  auto group = runtime().process_group();
  SharedDirectory directory(*group, "checkpoint_rss");
  auto config = small_llama(64);
  config.hidden = 256;
  config.intermediate = 256;
  config.heads = 4;
  const auto rules = models::llama_conversion_rules(config);
  stages::MultiStageOptions options;
  options.zero_stage = 3;
  options.shared_weight_buffers = 2;
  options.shared_gradient_buffers = 2;
  {
    stages::MultiStageModel source(models::build_llama_layers(config), group, options);
    source.initialize_weights(8);
    checkpoint::ExportOptions export_options;
    export_options.dtype = checkpoint::SafetensorsDtype::kBFloat16;
    export_options.max_file_bytes = 32 << 20;
    checkpoint::export_hf_checkpoint(directory / "hf", rules, source.stages(), export_options);
  }
  stages::MultiStageModel model(models::build_llama_layers(config), group, options);
  std::int64_t shard_bytes = 0;
  for (auto* stage : model.stages()) shard_bytes += stage->weight_shard().numel() * 4;

  ASSERT_TRUE(launch::reset_peak_resident_memory())
      << "this kernel does not reset the peak RSS; the measurement would be meaningless";
  const std::int64_t before = launch::resident_memory().current;
  checkpoint::ImportOptions import_options;
  import_options.chunk_bytes = kChunkBytes;
  const auto report =
      checkpoint::import_hf_checkpoint(directory / "hf", rules, model.stages(), import_options);
  const std::int64_t added = launch::resident_memory().peak - before;

  const auto mib = [](std::int64_t bytes) { return static_cast<double>(bytes) / (1 << 20); };
  std::printf(
      "[rank %d] shards %.1f MiB, checkpoint %.1f MiB (bf16), read by this rank %.1f MiB, "
      "peak added by the load %.1f MiB (bound %.1f)\n",
      group->rank(), mib(shard_bytes), mib(report.checkpoint_bytes), mib(report.bytes_read),
      mib(added), mib(kChunkBytes + kFixedAllowance));
  EXPECT_LE(added, kChunkBytes + kFixedAllowance);
  // What this rank reads is more than the bound: holding it would fail the test.
  EXPECT_GT(report.bytes_read, kChunkBytes + kFixedAllowance);
  EXPECT_LE(report.bytes_read_all_ranks, report.checkpoint_bytes * 105 / 100);
}

}  // namespace
}  // namespace fsdp::testing
