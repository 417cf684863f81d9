#include "bench/collective_bench.h"

#include "bench/timing.h"

#include <ATen/ATen.h>
#include <mpi.h>

#include <algorithm>
#include <stdexcept>

#include "fsdp/fsdp.h"
#include "fsdp/torch_interop.h"

namespace fsdp::bench {
namespace {

MPI_Datatype raw_datatype(c10::ScalarType dtype) {
  return dtype == at::kBFloat16 ? MPI_UINT16_T : MPI_FLOAT;
}

}  // namespace

double CollectiveBenchResult::algbw_gbps() const { return bytes / time_seconds / 1e9; }
double CollectiveBenchResult::busbw_gbps() const { return algbw_gbps() * (ranks - 1) / ranks; }
double CollectiveBenchResult::raw_busbw_gbps() const {
  return bytes / raw_time_seconds / 1e9 * (ranks - 1) / ranks;
}

std::vector<CollectiveBenchResult> run_collective_bench(launch::Runtime& runtime,
                                                        const CollectiveBenchOptions& options) {
  if (options.case_name != "restore" && options.case_name != "reduce") {
    throw std::invalid_argument("unknown benchmark case '" + options.case_name + "'");
  }
  if (runtime.uses_nccl()) {
    throw std::invalid_argument(
        "the restore/reduce cases compare against raw MPI and run on the "
        "MPI backend; run with --backend mpi");
  }
  const ElementType dtype =
      options.compute_dtype == "bfloat16" ? ElementType::kBFloat16 : ElementType::kFloat32;
  const MPI_Comm communicator = runtime.host_group()->communicator();
  const int ranks = runtime.world_size();
  std::vector<CollectiveBenchResult> results;

  for (const std::int64_t bytes : options.buffer_bytes) {
    const std::int64_t numel = bytes / element_size(dtype);
    FsdpOptions stage_options;
    stage_options.compute_dtype = dtype;
    stage_options.requires_grad = false;
    Fsdp stage("bench", {{"weight", {numel}}}, runtime.process_group(), stage_options);
    stage.weight_shard().fill_(1.0);
    stage.gradient_buffer().fill_(1.0);
    const std::int64_t padded = stage.layout().padded_numel();
    const int chunk = static_cast<int>(padded / ranks);
    // The raw baseline's own buffers, the same sizes as the stage's.
    at::Tensor raw_buffer = at::ones({padded}, at::TensorOptions().dtype(scalar_type_of(dtype)));
    at::Tensor raw_input = at::ones({padded}, at::kFloat);
    at::Tensor raw_output = at::empty({padded / ranks}, at::kFloat);

    auto ours = [&] {
      if (options.case_name == "restore") {
        stage.release();
        stage.restore_parameters();
      } else {
        stage.reduce_gradients(GradientReduction::kAverage);
      }
    };
    auto raw = [&] {
      if (options.case_name == "restore") {
        MPI_Allgather(MPI_IN_PLACE, 0, raw_datatype(scalar_type_of(dtype)), raw_buffer.data_ptr(),
                      chunk, raw_datatype(scalar_type_of(dtype)), communicator);
      } else {
        // The raw baseline reduces float32, as reduce_gradients does (a
        // bfloat16 buffer is widened first: that cost is ours to count).
        MPI_Reduce_scatter_block(raw_input.data_ptr(), raw_output.data_ptr(), chunk, MPI_FLOAT,
                                 MPI_SUM, communicator);
      }
    };
    for (int i = 0; i < options.warmup_iterations; ++i) {
      time_collectively(communicator, ours);
      time_collectively(communicator, raw);
    }
    std::vector<double> our_times;
    std::vector<double> raw_times;
    for (int i = 0; i < options.iterations; ++i) {
      // Alternate which goes first, so neither always runs on a warmer cache.
      if (i % 2 == 0) {
        our_times.push_back(time_collectively(communicator, ours));
        raw_times.push_back(time_collectively(communicator, raw));
      } else {
        raw_times.push_back(time_collectively(communicator, raw));
        our_times.push_back(time_collectively(communicator, ours));
      }
    }
    CollectiveBenchResult result;
    result.case_name = options.case_name;
    result.bytes = padded * element_size(dtype);
    result.ranks = ranks;
    result.dtype = options.compute_dtype;
    result.time_seconds = median(our_times);
    result.raw_time_seconds = median(raw_times);
    results.push_back(result);
  }
  return results;
}

}  // namespace fsdp::bench
