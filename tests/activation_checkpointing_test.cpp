// Activation checkpointing changes what is kept, never what is computed: at
// every world size, a model trained with checkpointing (stages or layers)
// prints bitwise the losses, router losses, expert counts and gradient norms
// of the same model trained without, ends with bitwise the same shards, and
// issues exactly the same collectives (counted by a process group that wraps
// the real one). The matrix covers ZeRO 1/2/3, prefetch, several layers per
// stage, micro-batches, shared buffers, tied and stacked parameters, MoE with
// both router losses on, and bfloat16 compute.
#include <gtest/gtest.h>

#include <ATen/ATen.h>
#include <c10/util/intrusive_ptr.h>
#include <torch/csrc/autograd/function.h>

#include <malloc.h>

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <type_traits>
#include <utility>

#include "fsdp/launch/process_memory.h"
#include "fsdp/models/llama.h"
#include "fsdp/mpi_process_group.h"
#include "fsdp/process_group.h"
#include "fsdp/stages/multi_stage_model.h"
#include "fsdp/stages/sharded_adamw.h"
#include "mpi_test_environment.h"
#include "training_trace.h"

namespace fsdp::stages {
namespace {

using namespace testing_trace;

void expect_same_run(const Case& c) {
  SCOPED_TRACE(c.describe());
  const Trace plain = train(c, ActivationCheckpointing::kNone);
  for (auto mode : {ActivationCheckpointing::kStages, ActivationCheckpointing::kLayers}) {
    SCOPED_TRACE(std::string("checkpointing ") + activation_checkpointing_name(mode));
    const Trace checkpointed = train(c, mode);
    // Recomputation reuses the restores the schedule does anyway.
    expect_same_trace(plain, checkpointed);
    EXPECT_LT(checkpointed.activation_estimate, plain.activation_estimate);
  }
  if (c.experts > 0) {
    // The router losses were on and moved: a test of equal zeros proves nothing.
    EXPECT_GT(plain.auxiliary_losses.front(), 0);
    EXPECT_NE(plain.auxiliary_losses.front(), plain.auxiliary_losses.back());
  }
  EXPECT_GT(plain.all_gathers, 0);
}

class CheckpointingMatrix
    : public ::testing::TestWithParam<std::tuple<int, bool, std::int64_t, int>> {};

TEST_P(CheckpointingMatrix, SameLossesGradientsWeightsAndCollectives) {
  Case c;
  c.zero_stage = std::get<0>(GetParam());
  c.prefetch = std::get<1>(GetParam());
  c.experts = std::get<2>(GetParam());
  c.layers_per_stage = std::get<3>(GetParam());
  expect_same_run(c);
}

INSTANTIATE_TEST_SUITE_P(ZeroPrefetchMoeLayersPerStage, CheckpointingMatrix,
                         ::testing::Combine(::testing::Values(1, 3), ::testing::Bool(),
                                            ::testing::Values<std::int64_t>(0, 4),
                                            ::testing::Values(1, 2)));

TEST(ActivationCheckpointing, ZeroTwoMicroBatches) {
  expect_same_run(with([](Case& c) { c.zero_stage = 2, c.micro_batches = 3, c.experts = 4; }));
}
TEST(ActivationCheckpointing, TiedEmbeddingsSharedBuffersPrefetch) {
  expect_same_run(with([](Case& c) { c.tied = true, c.shared_buffers = 2, c.prefetch = true; }));
}
TEST(ActivationCheckpointing, StackedMixtureOfExperts) {
  expect_same_run(with([](Case& c) { c.stacked = true, c.experts = 4; }));
}
TEST(ActivationCheckpointing, BFloat16Compute) {
  expect_same_run(with([](Case& c) { c.bfloat16 = true, c.experts = 4, c.prefetch = true; }));
}

// What one training step adds to the resident set at its peak: the free
// pages handed back first (glibc keeps them), the high-water mark reset.
std::int64_t step_peak_bytes(MultiStageModel& model, const at::Tensor& tokens,
                             std::int64_t vocabulary) {
  malloc_trim(0);
  EXPECT_TRUE(launch::reset_peak_resident_memory()) << "the step peaks would be meaningless";
  const std::int64_t before = launch::resident_memory().current;
  model.zero_gradients();
  model.forward_backward(tokens.narrow(1, 0, tokens.size(1) - 1), [&](const at::Tensor& logits) {
    return at::cross_entropy_loss(logits.reshape({-1, vocabulary}),
                                  tokens.narrow(1, 1, tokens.size(1) - 1).reshape({-1}));
  });
  return launch::resident_memory().peak - before;
}

// The point of it all, measured: a step's peak memory falls, and the
// estimate of the memory report is near what the operating system sees.
// Stacked: the four blocks are one layer of eight parts (StackedDecoder),
// which must be recomputed a part at a time too, not as a whole stack.
void expect_step_peak_memory_falls(bool stacked) {
  models::LlamaConfig config;
  config.stacked_layers = stacked;
  config.vocabulary = 2048;
  config.hidden = 256;
  config.heads = 2;
  config.intermediate = 688;
  config.layers = 4;
  config.max_sequence = 256;
  const at::Tensor tokens =
      (at::arange(2 * 257, at::kLong).view({2, 257}) * 37).remainder(config.vocabulary);
  // The gradient reduction's scratch (Open MPI's, as large as the stage's
  // gradients or twice that: a stacked model's one stage is every block)
  // would stand beside the activations in the peak, untouched by
  // checkpointing: bounded to a few MiB here, so the peak shows the
  // activations. The estimate counts it either way.
  MpiProcessGroup& host = *testing::runtime().host_group();
  const std::int64_t staging = host.staging_elements();
  host.set_staging_elements(std::int64_t{1} << 18);
  std::map<ActivationCheckpointing, std::pair<std::int64_t, std::int64_t>> measured;
  for (auto mode : {ActivationCheckpointing::kNone, ActivationCheckpointing::kLayers}) {
    MultiStageOptions options;
    options.zero_stage = 3;
    options.shared_weight_buffers = 2;
    options.shared_gradient_buffers = 2;
    options.activation_checkpointing = mode;
    MultiStageModel model(models::build_llama_layers(config), testing::runtime().process_group(),
                          options);
    model.initialize_weights(3);
    step_peak_bytes(model, tokens, config.vocabulary);  // first use: lazy allocations
    // The step's peak holds a gradient reduction's scratch too (a stacked
    // model's one stage reduces the whole stack's gradients at once).
    const ModelMemory report = model.memory(nullptr, 2, 256);
    measured[mode] = {step_peak_bytes(model, tokens, config.vocabulary),
                      report.activations + report.collective_staging};
  }
  host.set_staging_elements(staging);
  ASSERT_GT(launch::resident_memory().peak, 0) << "no /proc/self/status";
  const auto [plain, plain_estimate] = measured[ActivationCheckpointing::kNone];
  const auto [layers, layers_estimate] = measured[ActivationCheckpointing::kLayers];
  if (testing::runtime().rank() == 0) {
    std::printf(
        "[ memory   ] %s: step peak %lld MiB without checkpointing (estimate %lld), %lld MiB "
        "with layers (estimate %lld; activations and the reduction's scratch)\n",
        stacked ? "stacked" : "unstacked", static_cast<long long>(plain >> 20),
        static_cast<long long>(plain_estimate >> 20), static_cast<long long>(layers >> 20),
        static_cast<long long>(layers_estimate >> 20));
  }
  // Measured at np 1-4: unstacked 0.33-0.39 of the peak without
  // checkpointing, stacked 0.42-0.49 (1.28 when the stack was recomputed whole).
  EXPECT_LT(layers, plain * 6 / 10);
  for (const auto& [peak, estimate] :
       {measured[ActivationCheckpointing::kNone], measured[ActivationCheckpointing::kLayers]}) {
    EXPECT_GT(estimate, peak / 2);
    EXPECT_LT(estimate, peak * 2);
  }
}

TEST(ActivationCheckpointing, StepPeakMemoryFallsAndTheEstimateHolds) {
  expect_step_peak_memory_falls(/*stacked=*/false);
}
TEST(ActivationCheckpointing, StackedLayersStepPeakMemoryFallsAndTheEstimateHolds) {
  expect_step_peak_memory_falls(/*stacked=*/true);
}

// A weak reference to a graph node: Tensor::grad_fn() is a std::shared_ptr
// in libtorch 1.x and a c10::intrusive_ptr in 2.x.
template <typename Strong>
struct WeakNode;
template <typename T>
struct WeakNode<std::shared_ptr<T>> {
  explicit WeakNode(const std::shared_ptr<T>& node) : weak(node) {}
  bool expired() const { return weak.expired(); }
  std::weak_ptr<T> weak;
};
template <typename T, typename NullType>
struct WeakNode<c10::intrusive_ptr<T, NullType>> {
  explicit WeakNode(const c10::intrusive_ptr<T, NullType>& node) : weak(node) {}
  bool expired() const { return weak.expired(); }
  c10::weak_intrusive_ptr<T, NullType> weak;
};
using GraphReference =
    WeakNode<std::decay_t<decltype(std::declval<const at::Tensor&>().grad_fn())>>;

// A layer of two parts (Layer::forward_part) that notes, each time a part
// runs with autograd, how many graphs of its parts were still alive, through
// weak references to the parts' output nodes. `parts` 1 declares the same
// computation as one part.
class TwoPartLayer final : public Layer {
 public:
  TwoPartLayer(std::string name, std::size_t parts, std::vector<GraphReference>& graphs,
               std::size_t& most_alive)
      : name_(std::move(name)), parts_(parts), graphs_(graphs), most_alive_(most_alive) {}
  std::vector<ParameterSpec> parameter_specs() const override {
    return {{name_, {4}, ElementType::kFloat32, ParameterInit::uniform(0.5, 1.5)}};
  }
  void bind(std::vector<at::Tensor> parameters) override { weight_ = parameters.at(0); }
  at::Tensor forward(const at::Tensor& input) override {
    return forward_part(1, forward_part(0, input));
  }
  std::size_t forward_parts() const override { return parts_; }
  at::Tensor forward_part(std::size_t part, const at::Tensor& input) override {
    const at::Tensor output = part == 0 ? (input * weight_).tanh() : (input + weight_).sin() * 2;
    if (output.requires_grad()) {
      std::size_t alive = 0;
      for (const auto& graph : graphs_) alive += graph.expired() ? 0 : 1;
      most_alive_ = std::max(most_alive_, alive);
      graphs_.emplace_back(output.grad_fn());
    }
    return output;
  }

 private:
  std::string name_;
  std::size_t parts_;
  at::Tensor weight_;
  std::vector<GraphReference>& graphs_;
  std::size_t& most_alive_;
};

// A last layer of one part: the graph the loss differentiates at once.
class Summing final : public Layer {
 public:
  std::vector<ParameterSpec> parameter_specs() const override { return {}; }
  void bind(std::vector<at::Tensor>) override {}
  at::Tensor forward(const at::Tensor& input) override { return input.sum(-1); }
};

// Under checkpointing by layers, a layer of several parts is recomputed one
// part at a time: no other part's graph is alive when a part runs with
// autograd. The gradients are bitwise those of the same layers as one part
// and of the run without checkpointing.
TEST(ActivationCheckpointing, LayersOfPartsRecomputeOnePartAtATime) {
  struct Result {
    std::size_t most_alive = 0;
    std::vector<at::Tensor> gradients;
  };
  auto run = [](ActivationCheckpointing mode, std::size_t parts) {
    Result result;
    std::vector<GraphReference> graphs;
    std::vector<std::unique_ptr<Layer>> layers;
    for (int l = 0; l < 3; ++l) {
      layers.push_back(std::make_unique<TwoPartLayer>("layer." + std::to_string(l), parts, graphs,
                                                      result.most_alive));
    }
    layers.push_back(std::make_unique<Summing>());
    MultiStageOptions options;
    options.zero_stage = 3;
    options.activation_checkpointing = mode;
    MultiStageModel model(std::move(layers), testing::runtime().process_group(), options);
    model.initialize_weights(5);
    const at::Tensor input = at::linspace(-1, 1, 24).view({6, 4});
    model.zero_gradients();
    model.forward_backward(input, [](const at::Tensor& output) { return output.square().mean(); });
    model.reduce_gradients();
    for (Fsdp* stage : model.stages()) result.gradients.push_back(stage->gradient_shard().clone());
    return result;
  };
  const Result plain = run(ActivationCheckpointing::kNone, 2);
  const Result whole = run(ActivationCheckpointing::kLayers, 1);
  const Result parts = run(ActivationCheckpointing::kLayers, 2);
  EXPECT_EQ(plain.most_alive, 5u);  // without checkpointing every graph lives to the backward
  EXPECT_EQ(whole.most_alive, 1u);  // a layer recomputed whole: its first part's graph
  EXPECT_EQ(parts.most_alive, 0u);
  ASSERT_EQ(parts.gradients.size(), plain.gradients.size());
  for (std::size_t s = 0; s < plain.gradients.size(); ++s) {
    EXPECT_TRUE(parts.gradients[s].equal(plain.gradients[s])) << "stage " << s;
    EXPECT_TRUE(parts.gradients[s].equal(whole.gradients[s])) << "stage " << s;
  }
  if (testing::runtime().rank() == 0) {  // the others' shards may be padding only
    EXPECT_GT(plain.gradients.front().abs().sum().item<double>(), 0);
  }
}

TEST(ActivationCheckpointing, NamesRoundTripAndBadNamesAreRefused) {
  for (auto mode : {ActivationCheckpointing::kNone, ActivationCheckpointing::kStages,
                    ActivationCheckpointing::kLayers}) {
    EXPECT_EQ(parse_activation_checkpointing(activation_checkpointing_name(mode)), mode);
  }
  try {
    parse_activation_checkpointing("every-2");
    FAIL() << "accepted every-2";
  } catch (const std::invalid_argument& error) {
    EXPECT_NE(std::string(error.what()).find("'every-2' (expected none, stages or layers)"),
              std::string::npos)
        << error.what();
  }
}

}  // namespace
}  // namespace fsdp::stages
