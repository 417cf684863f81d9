#include "bench/checkpointing_bench.h"

#include <ATen/ATen.h>
#include <mpi.h>

#include <stdexcept>

#include "bench/bench_trainee.h"
#include "bench/timing.h"
#include "fsdp/host_allocator.h"
#include "fsdp/launch/process_memory.h"
#include "fsdp/models/llama.h"
#include "fsdp/stages/sharded_adamw.h"

namespace fsdp::bench {
namespace {

// Starts a new high-water mark at the current resident set, after handing
// the allocator's free pages back (glibc and tcmalloc keep them otherwise,
// and the other run's freed activations would hide this one's).
void reset_peak_rss() {
  release_free_host_memory();
  if (!launch::reset_peak_resident_memory()) {
    throw std::runtime_error(
        "checkpointing bench: this kernel does not reset the peak RSS through "
        "/proc/self/clear_refs; the memory figures would be meaningless");
  }
}

double mebibytes(std::int64_t bytes) { return static_cast<double>(bytes) / (1 << 20); }

}  // namespace

CheckpointingBenchResult run_checkpointing_bench(launch::Runtime& runtime,
                                                 const CheckpointingBenchOptions& options) {
  models::LlamaConfig config;
  config.vocabulary = options.vocabulary;
  config.hidden = options.hidden;
  config.heads = options.heads;
  config.intermediate = options.intermediate;
  config.layers = options.layers;
  config.max_sequence = options.sequence;
  const MPI_Comm world = runtime.host_group()->communicator();
  at::manual_seed(5 + runtime.rank());
  const at::Tensor tokens =
      at::randint(config.vocabulary, {options.rows_per_rank, options.sequence + 1});
  const at::Tensor inputs = tokens.narrow(1, 0, options.sequence);
  const at::Tensor targets = tokens.narrow(1, 1, options.sequence);

  BenchTrainee plain(config, runtime, bench_model_options(3), 1e-4);
  stages::MultiStageOptions checkpointing = bench_model_options(3);
  checkpointing.activation_checkpointing = options.mode;
  BenchTrainee checkpointed(config, runtime, checkpointing, 1e-4);
  CheckpointingBenchResult result;
  for (const Fsdp* stage : plain.model->stages()) {
    result.parameters += stage->layout().unpadded_numel();
  }
  const auto estimate = [&](const BenchTrainee& trainee) {
    return static_cast<double>(
               trainee.model->memory(nullptr, options.rows_per_rank, options.sequence)
                   .activations) /
           (1 << 20);
  };
  result.plain_estimate_mib = estimate(plain);
  result.checkpointed_estimate_mib = estimate(checkpointed);

  // Timed rounds first (the allocator keeps its pages, as in a real run),
  // then one round that measures each step's peak above its start, max over
  // ranks (free pages released first, so that a page the other run freed is
  // not counted as this one's).
  const auto peak_of_step = [&](BenchTrainee& trainee) {
    reset_peak_rss();
    const std::int64_t before = launch::resident_memory().current;
    trainee.step(inputs, targets);
    double peak = mebibytes(launch::resident_memory().peak - before);
    MPI_Allreduce(MPI_IN_PLACE, &peak, 1, MPI_DOUBLE, MPI_MAX, world);
    return peak;
  };
  std::vector<double> plain_times, checkpointed_times;
  for (int i = 0; i < options.iterations + 1; ++i) {  // the first round warms up
    const double a = time_collectively(world, [&] { checkpointed.step(inputs, targets); });
    const double b = time_collectively(world, [&] { plain.step(inputs, targets); });
    if (i == 0) continue;
    checkpointed_times.push_back(a);
    plain_times.push_back(b);
  }
  result.checkpointed_step_peak_mib = peak_of_step(checkpointed);
  result.plain_step_peak_mib = peak_of_step(plain);
  const double tokens_per_step =
      static_cast<double>(options.rows_per_rank * runtime.world_size() * options.sequence);
  result.plain_tokens_per_second = tokens_per_step / median(plain_times);
  result.checkpointed_tokens_per_second = tokens_per_step / median(checkpointed_times);
  result.losses_bitwise_equal =
      plain.losses == checkpointed.losses && plain.norms == checkpointed.norms;
  const auto plain_counts = plain.model->communication_statistics();
  const auto checkpointed_counts = checkpointed.model->communication_statistics();
  result.collectives_equal = plain_counts.restores == checkpointed_counts.restores;
  return result;
}

}  // namespace fsdp::bench
