#include "bench/step_bench.h"

#include <ATen/ATen.h>
#include <mpi.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/optim/adamw.h>

#include <algorithm>

#include "models/llama.h"
#include "stages/multi_stage_model.h"
#include "stages/sharded_adamw.h"

namespace fsdp::bench {
namespace {

double median(std::vector<double> values) {
  std::sort(values.begin(), values.end());
  return values[values.size() / 2];
}

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

  stages::MultiStageOptions model_options;
  model_options.zero_stage = options.zero_stage;
  stages::MultiStageModel model(models::build_llama_layers(config), runtime.process_group(),
                                model_options);
  model.initialize_weights(1);
  stages::ShardedAdamW optimizer(model.stages(), {});

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
  const bool run_plain = ranks == 1;

  auto our_step = [&] {
    model.zero_gradients();
    model.forward_backward(
        local_inputs, [&](const at::Tensor& logits) { return loss_of(logits, local_targets); });
    model.reduce_gradients();
    optimizer.step(1e-3);
  };
  auto plain_step = [&] {
    plain_optimizer.zero_grad();
    at::Tensor activation = inputs;
    for (auto& layer : plain_layers) activation = layer->forward(activation);
    torch::autograd::backward({loss_of(activation, targets)});
    plain_optimizer.step();
  };
  const MPI_Comm world = runtime.host_group()->communicator();
  auto timed = [&](auto&& step) {
    MPI_Barrier(world);
    const double start = MPI_Wtime();
    step();
    double elapsed = MPI_Wtime() - start;
    MPI_Allreduce(MPI_IN_PLACE, &elapsed, 1, MPI_DOUBLE, MPI_MAX, world);
    return elapsed;
  };
  std::vector<double> ours, plain;
  for (int i = 0; i < options.iterations + 1; ++i) {  // the first round warms up
    const double a = timed(our_step);
    const double b = run_plain ? timed(plain_step) : 0.0;
    if (i == 0) continue;
    ours.push_back(a);
    plain.push_back(b);
  }
  const double tokens_per_step = static_cast<double>(options.batch * options.sequence);
  StepBenchResult result;
  result.tokens_per_second = tokens_per_step / median(ours);
  result.plain_tokens_per_second = run_plain ? tokens_per_step / median(plain) : 0.0;
  return result;
}

}  // namespace fsdp::bench
