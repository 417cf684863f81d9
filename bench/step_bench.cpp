#include "bench/step_bench.h"

#include "bench/bench_trainee.h"

#include "bench/timing.h"

#include <ATen/ATen.h>
#include <mpi.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/optim/adamw.h>

#include <algorithm>
#include <functional>

#include "fsdp/models/llama.h"
#include "fsdp/stages/multi_stage_model.h"
#include "fsdp/stages/sharded_adamw.h"

namespace fsdp::bench {
namespace {

at::Tensor loss_of(const at::Tensor& logits, const at::Tensor& targets) {
  return at::cross_entropy_loss(logits.reshape({-1, logits.size(-1)}), targets.reshape({-1}));
}

}  // namespace

StepBenchResult run_step_bench(launch::Runtime& runtime, const StepBenchOptions& options) {
  models::LlamaConfig config;
  config.vocabulary = 512;
  config.hidden = options.hidden;
  config.heads = 4;
  config.intermediate = 4 * options.hidden;
  config.layers = options.layers;
  config.max_sequence = options.sequence;
  const int ranks = runtime.world_size();
  if (options.batch % ranks != 0) {
    throw std::invalid_argument("step bench: batch " + std::to_string(options.batch) +
                                " does not split over " + std::to_string(ranks) + " ranks");
  }
  const std::int64_t local_batch = options.batch / ranks;
  at::manual_seed(3);
  const at::Tensor tokens = at::randint(config.vocabulary, {options.batch, options.sequence + 1});
  const at::Tensor inputs = tokens.narrow(1, 0, options.sequence);
  const at::Tensor targets = tokens.narrow(1, 1, options.sequence);
  const at::Tensor local_inputs = inputs.narrow(0, runtime.rank() * local_batch, local_batch);
  const at::Tensor local_targets = targets.narrow(0, runtime.rank() * local_batch, local_batch);
  const MPI_Comm world = runtime.host_group()->communicator();

  auto timed = [&](const std::function<void()>& step) { return time_collectively(world, step); };
  auto exposed = [&](stages::MultiStageModel& model) {
    double seconds = model.communication_statistics().exposed_seconds();
    model.reset_communication_statistics();
    MPI_Allreduce(MPI_IN_PLACE, &seconds, 1, MPI_DOUBLE, MPI_MAX, world);
    return seconds * 1e3;
  };
  const double tokens_per_step = static_cast<double>(options.batch * options.sequence);
  StepBenchResult result;

  BenchTrainee ours(config, runtime, bench_model_options(options.zero_stage), 1e-3);
  if (ranks == 1) {
    // Plain libtorch: the same layers on ordinary tensors.
    auto plain_layers = models::build_llama_layers(config);
    std::vector<at::Tensor> plain_parameters;
    for (auto& layer : plain_layers) {
      std::vector<at::Tensor> bound;
      for (const ParameterSpec& spec : layer->parameter_specs()) {
        bound.push_back(at::randn(spec.shape).mul(0.02).set_requires_grad(true));
        plain_parameters.push_back(bound.back());
      }
      layer->bind(bound);
    }
    torch::optim::AdamW plain_optimizer(plain_parameters, torch::optim::AdamWOptions(1e-3));
    auto plain_step = [&] {
      plain_optimizer.zero_grad();
      at::Tensor activation = inputs;
      for (auto& layer : plain_layers) activation = layer->forward(activation);
      torch::autograd::backward({loss_of(activation, targets)});
      plain_optimizer.step();
    };
    std::vector<double> our_times, plain_times, our_exposed;
    for (int i = 0; i < options.iterations + 1; ++i) {  // the first round warms up
      const double a = timed([&] { ours.step(local_inputs, local_targets); });
      const double e = exposed(*ours.model);
      const double b = timed(plain_step);
      if (i == 0) continue;
      our_times.push_back(a);
      our_exposed.push_back(e);
      plain_times.push_back(b);
    }
    result.tokens_per_second = tokens_per_step / median(our_times);
    result.plain_tokens_per_second = tokens_per_step / median(plain_times);
    result.exposed_milliseconds = median(our_exposed);
    return result;
  }

  // Four trainees from the same weights; a step of each in turn, so every
  // configuration sees the same minutes of a noisy machine.
  std::vector<std::unique_ptr<BenchTrainee>> trainees;
  for (const bool asynchronous : {false, true}) {
    for (const bool prefetch : {false, true}) {
      stages::MultiStageOptions model_options = bench_model_options(options.zero_stage);
      model_options.prefetch = prefetch;
      model_options.asynchronous_reduction = asynchronous && options.zero_stage >= 2;
      if (!prefetch && !asynchronous) {
        trainees.push_back(nullptr);  // `ours`, made above
      } else if (!asynchronous || options.zero_stage >= 2) {
        trainees.push_back(std::make_unique<BenchTrainee>(config, runtime, model_options, 1e-3));
      } else {
        continue;  // ZeRO-1 reduces once, after the backward: nothing to make asynchronous
      }
      result.rows.push_back({prefetch, model_options.asynchronous_reduction, 0, 0});
    }
  }
  auto trainee = [&](std::size_t r) -> BenchTrainee& { return r == 0 ? ours : *trainees[r]; };
  std::vector<std::vector<double>> times(result.rows.size()), exposures(result.rows.size());
  for (int i = 0; i < options.iterations + 1; ++i) {  // the first round warms up
    for (std::size_t r = 0; r < result.rows.size(); ++r) {
      BenchTrainee& t = trainee(r);
      const double seconds = timed([&] { t.step(local_inputs, local_targets); });
      const double exposed_ms = exposed(*t.model);
      if (i == 0) continue;
      times[r].push_back(seconds);
      exposures[r].push_back(exposed_ms);
    }
  }
  for (std::size_t r = 0; r < result.rows.size(); ++r) {
    result.rows[r].tokens_per_second = tokens_per_step / median(times[r]);
    result.rows[r].exposed_milliseconds = median(exposures[r]);
    result.rows_bitwise_equal = result.rows_bitwise_equal && trainee(r).losses == ours.losses &&
                                trainee(r).norms == ours.norms;
  }
  result.tokens_per_second = result.rows.front().tokens_per_second;
  result.exposed_milliseconds = result.rows.front().exposed_milliseconds;
  return result;
}

}  // namespace fsdp::bench
