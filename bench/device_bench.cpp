#include "bench/device_bench.h"

#include <ATen/ATen.h>

#include <stdexcept>

#include "bench/timing.h"
#include "fsdp/fsdp.h"
#include "fsdp/kernels/adamw.h"
#include "fsdp/mpi_process_group.h"

#if FSDP_WITH_CUDA
#include <cuda_runtime_api.h>
#endif

namespace fsdp::bench {
namespace {

// Waits for every kernel and collective on the device, so host timers see them.
void synchronize_device() {
#if FSDP_WITH_CUDA
  if (cudaDeviceSynchronize() != cudaSuccess) {
    throw std::runtime_error("fsdp-bench --case device: cudaDeviceSynchronize failed");
  }
#endif
}

template <typename Operation>
double median_seconds(MPI_Comm communicator, int iterations, Operation&& operation) {
  for (int warmup = 0; warmup < 2; ++warmup) operation();
  synchronize_device();
  std::vector<double> times;
  for (int i = 0; i < iterations; ++i) {
    times.push_back(time_collectively(communicator, [&] {
      operation();
      synchronize_device();
    }));
  }
  return median(times);
}

}  // namespace

std::vector<DeviceBenchResult> run_device_bench(launch::Runtime& runtime,
                                                const std::vector<std::int64_t>& elements,
                                                int iterations) {
  if (!runtime.uses_nccl()) {
    throw std::invalid_argument(
        "--case device measures device memory work: it needs the NCCL backend (a GPU "
        "of its own for every rank and a libtorch with CUDA); this run has backend mpi");
  }
  const MPI_Comm communicator = runtime.host_group()->communicator();
  const auto on_device =
      at::TensorOptions().device(c10::Device(c10::DeviceType::CUDA, runtime.cuda_device()));
  std::vector<DeviceBenchResult> results;
  for (const std::int64_t count : elements) {
    DeviceBenchResult result;
    result.elements = count;
    const double gigabytes = static_cast<double>(count) * 1e-9;

    const at::Tensor source = at::ones({count}, on_device.dtype(at::kFloat));
    at::Tensor destination = at::empty_like(source);
    const double copy =
        median_seconds(communicator, iterations, [&] { destination.copy_(source); });
    result.copy_gbps = 8 * gigabytes / copy;

    // A stage whose padded size is `count` elements over the group's ranks.
    FsdpOptions options;
    options.device = on_device.device();
    options.compute_dtype = ElementType::kBFloat16;
    options.requires_grad = false;
    Fsdp stage("bench", {{"weight", {count * runtime.world_size()}}}, runtime.process_group(),
               options);
    stage.weight_shard().fill_(0.5);
    const double restore = median_seconds(communicator, iterations, [&] {
      stage.invalidate();
      stage.restore_parameters();
    });
    // Per rank: its shard read (4 B) and cast into the buffer (2 B), then the
    // all-gather writes the other ranks' slices (2 B each).
    result.restore_gbps = (6 + 2 * (runtime.world_size() - 1)) * gigabytes / restore;

    at::Tensor weights = at::ones({count}, on_device.dtype(at::kFloat));
    const at::Tensor gradients = at::full({count}, 1e-3, on_device.dtype(at::kFloat));
    at::Tensor exp_avg = at::zeros_like(weights), exp_avg_sq = at::zeros_like(weights);
    std::int64_t step = 0;
    const double adamw = median_seconds(communicator, iterations, [&] {
      kernels::adamw_step_on_device(
          {weights.data_ptr<float>(), gradients.data_ptr<float>(), exp_avg.data_ptr<float>(),
           exp_avg_sq.data_ptr<float>(), count},
          {}, ++step, 0.1, 1.0f, runtime.process_group()->cuda_compute_stream());
    });
    result.adamw_gbps = 28 * gigabytes / adamw;
    results.push_back(result);
  }
  return results;
}

}  // namespace fsdp::bench
