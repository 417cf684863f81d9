// An example harness: its own model, its own loop, the runtime underneath.
//
//   mpirun -np 2 harness --steps 10 --checkpoint run          # train, save
//   mpirun -np 1 harness --steps 20 --checkpoint run --resume  # on, at another world size
//
// The model regresses a smooth function of 16 inputs: two layers written
// against the Layer API (Dense: declared parameters, never allocated whole on
// a rank) and an adopted torch::nn::Linear head. Weights are sharded over the
// ranks (ZeRO-3), AdamW runs on the shards, and the checkpoint loads at any
// world size. Every batch is a function of the step alone, so the losses do
// not depend on the world size.
#include <torch/torch.h>

#include <cmath>
#include <iostream>

#include "fsdp/checkpoint/distributed_checkpoint.h"
#include "fsdp/launch/program.h"
#include "fsdp/stages/adopted_module.h"
#include "fsdp/stages/multi_stage_model.h"
#include "fsdp/stages/sharded_adamw.h"

namespace po = boost::program_options;

namespace {

constexpr std::int64_t kInputs = 16, kWidth = 32, kBatch = 16;

// tanh(x W^T + b), with parameters the runtime allocates, shards and restores.
class Dense final : public fsdp::stages::Layer {
 public:
  Dense(std::string name, std::int64_t in, std::int64_t out)
      : name_(std::move(name)), in_(in), out_(out) {}
  std::vector<fsdp::ParameterSpec> parameter_specs() const override {
    const double scale = 1.0 / std::sqrt(static_cast<double>(in_));
    return {{name_ + ".weight",
             {out_, in_},
             fsdp::ElementType::kFloat32,
             fsdp::ParameterInit::uniform(-scale, scale)},
            {name_ + ".bias", {out_}, fsdp::ElementType::kFloat32, fsdp::ParameterInit::zeros()}};
  }
  void bind(std::vector<at::Tensor> parameters) override { parameters_ = std::move(parameters); }
  at::Tensor forward(const at::Tensor& input) override {
    return at::tanh(at::linear(input, parameters_[0], parameters_[1]));
  }

 private:
  std::string name_;
  std::int64_t in_, out_;
  std::vector<at::Tensor> parameters_;
};

// Rows [first, first + rows) of step `step`'s batch: inputs and targets.
std::pair<at::Tensor, at::Tensor> batch_rows(std::int64_t step, std::int64_t first,
                                             std::int64_t rows) {
  const auto index = at::arange(first * kInputs, (first + rows) * kInputs, at::kDouble);
  const auto inputs =
      at::sin(index * 0.37 + 0.11 * static_cast<double>(step)).view({rows, kInputs});
  const auto targets = at::sin(inputs.sum(1, /*keepdim=*/true) * 0.5);
  return {inputs.to(at::kFloat), targets.to(at::kFloat)};
}

int train(fsdp::launch::Runtime& runtime, const po::variables_map& values) {
  const auto steps = values["steps"].as<std::int64_t>();
  const auto directory = values["checkpoint"].as<std::string>();
  std::vector<std::unique_ptr<fsdp::stages::Layer>> layers;
  layers.push_back(std::make_unique<Dense>("hidden.0", kInputs, kWidth));
  layers.push_back(std::make_unique<Dense>("hidden.1", kWidth, kWidth));
  torch::manual_seed(0);  // the adopted head's initial values: the same on every rank
  auto head = torch::nn::Linear(kWidth, 1);
  layers.push_back(std::make_unique<fsdp::stages::AdoptedModule>(
      "head.", head.ptr(), [head](const at::Tensor& x) mutable { return head->forward(x); }));

  fsdp::stages::MultiStageOptions options;
  options.zero_stage = 3;
  fsdp::stages::MultiStageModel model(std::move(layers), runtime.process_group(), options);
  model.initialize_weights(/*seed=*/7);  // the adopted head keeps torch's own initial values
  fsdp::stages::ShardedAdamW optimizer(model.stages(), {});

  std::int64_t first_step = 1;
  if (values["resume"].as<bool>()) {
    const auto index = fsdp::checkpoint::load_checkpoint(directory, model.stages(), &optimizer);
    first_step = index.step + 1;
    if (runtime.rank() == 0) {
      std::cout << "resumed at step " << index.step << " (saved by " << index.world_size
                << " ranks)" << std::endl;
    }
  }
  const std::int64_t rows = kBatch / runtime.world_size();
  for (std::int64_t step = first_step; step <= steps; ++step) {
    const auto [inputs, targets] = batch_rows(step, runtime.rank() * rows, rows);
    model.zero_gradients();
    std::vector<double> loss = {model.forward_backward(
        inputs, [&](const at::Tensor& output) { return at::mse_loss(output, targets); })};
    model.reduce_gradients();
    optimizer.step(1e-2);
    runtime.host_group()->all_reduce(fsdp::host_span(loss), fsdp::ReduceOp::kAverage);
    if (runtime.rank() == 0) std::cout << "step " << step << " loss " << loss[0] << std::endl;
  }
  fsdp::checkpoint::SaveOptions save;
  save.step = steps;
  fsdp::checkpoint::save_checkpoint(directory, model.stages(), &optimizer, save);
  if (runtime.rank() == 0) std::cout << "saved " << directory << std::endl;
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  po::options_description options("harness options");
  options.add_options()("steps", po::value<std::int64_t>()->default_value(10),
                        "train to this step")(
      "checkpoint", po::value<std::string>()->default_value("harness-checkpoint"),
      "where to save (and --resume from)")("resume", po::bool_switch(), "continue a saved run");
  fsdp::launch::ProgramInfo info;
  info.name = "harness";
  info.summary = "an example harness on the installed fsdp-runtime package";
  info.usage = "mpirun -np N harness [options]";
  info.preflight = [](const po::variables_map&, int world_size) {
    if (kBatch % world_size != 0) {
      throw po::error("the batch of " + std::to_string(kBatch) + " does not split over " +
                      std::to_string(world_size) + " ranks");
    }
  };
  return fsdp::launch::run_program(argc, argv, info, options, train);
}
