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
#include "fsdp/process_group.h"
#include "fsdp/stages/multi_stage_model.h"
#include "fsdp/stages/sharded_adamw.h"
#include "mpi_test_environment.h"

namespace fsdp::stages {
namespace {

constexpr std::int64_t kGlobalBatch = 12;  // divisible by 1, 2, 3 and 4
constexpr std::int64_t kSequence = 8;
constexpr int kSteps = 6;

// The real group, counting the collectives started through it.
class CountingGroup final : public ProcessGroup {
 public:
  explicit CountingGroup(std::shared_ptr<ProcessGroup> inner)
      : ProcessGroup(inner->rank(), inner->size(), "counted", inner->timeout()),
        inner_(std::move(inner)) {}
  std::string_view backend_name() const override { return inner_->backend_name(); }
  MemoryLocation memory_location() const override { return inner_->memory_location(); }
  [[noreturn]] void abort_job(std::string_view message) override {
    inner_->abort_job(message);
    std::abort();  // not reached: the inner group ends the job
  }
  std::int64_t all_gathers = 0, reduce_scatters = 0, all_reduces = 0, others = 0;

 protected:
  Work start_all_gather_in_place(TensorSpan buffer, std::string) override {
    ++all_gathers;
    return inner_->all_gather_in_place_async(buffer);
  }
  Work start_reduce_scatter(TensorSpan input, TensorSpan output, ReduceOp op,
                            std::string) override {
    ++reduce_scatters;
    return inner_->reduce_scatter_async(input, output, op);
  }
  Work start_all_reduce(TensorSpan buffer, ReduceOp op, std::string) override {
    ++all_reduces;
    return inner_->all_reduce_async(buffer, op);
  }
  Work start_broadcast(TensorSpan buffer, int root, std::string) override {
    ++others;
    return inner_->broadcast_async(buffer, root);
  }
  Work start_barrier(std::string) override {
    ++others;
    return inner_->barrier_async();
  }

 private:
  std::shared_ptr<ProcessGroup> inner_;
};

struct Case {
  int zero_stage = 3;
  bool prefetch = false;
  int layers_per_stage = 1;
  std::int64_t micro_batches = 1;
  std::int64_t experts = 0;
  bool tied = false;
  bool stacked = false;
  int shared_buffers = 0;  // weight and gradient buffers (ZeRO-3)
  bool bfloat16 = false;

  std::string describe() const {
    return "zero " + std::to_string(zero_stage) + ", prefetch " + std::to_string(prefetch) +
           ", layers per stage " + std::to_string(layers_per_stage) + ", micro-batches " +
           std::to_string(micro_batches) + ", experts " + std::to_string(experts) + ", tied " +
           std::to_string(tied) + ", stacked " + std::to_string(stacked) + ", shared buffers " +
           std::to_string(shared_buffers) + ", bfloat16 " + std::to_string(bfloat16);
  }
};

models::LlamaConfig config_for(const Case& c) {
  models::LlamaConfig config;
  config.vocabulary = 32;
  config.hidden = 16;
  config.heads = 2;
  config.kv_heads = 1;
  config.intermediate = 32;
  config.layers = 3;
  config.max_sequence = kSequence;
  config.experts = c.experts;
  config.experts_per_token = 2;
  config.router_aux_loss_coefficient = c.experts > 0 ? 0.05 : 0;
  config.router_z_loss_coefficient = c.experts > 0 ? 0.01 : 0;
  config.tie_embeddings = c.tied;
  config.stacked_layers = c.stacked;
  return config;
}

// What a run shows, step by step, and where it ends.
struct Trace {
  std::vector<double> losses, auxiliary_losses, gradient_norms;
  std::vector<at::Tensor> expert_tokens;  // per step, every routing layer concatenated
  std::vector<at::Tensor> final_shards;
  std::int64_t all_gathers = 0, reduce_scatters = 0, all_reduces = 0;
  std::int64_t activation_estimate = 0;
};

Trace train(const Case& c, ActivationCheckpointing mode) {
  auto counting = std::make_shared<CountingGroup>(testing::runtime().process_group());
  MultiStageOptions options;
  options.zero_stage = c.zero_stage;
  options.prefetch = c.prefetch;
  options.layers_per_stage = c.layers_per_stage;
  options.shared_weight_buffers = c.shared_buffers;
  options.shared_gradient_buffers = c.shared_buffers;
  options.activation_checkpointing = mode;
  options.fsdp.alignment = 8;
  if (c.bfloat16) options.fsdp.compute_dtype = ElementType::kBFloat16;
  const models::LlamaConfig config = config_for(c);
  MultiStageModel model(models::build_llama_layers(config), counting, options);
  model.initialize_weights(7);
  ShardedAdamWOptions adam;
  adam.max_gradient_norm = 1.0;
  ShardedAdamW optimizer(model.stages(), adam);

  const std::int64_t local = kGlobalBatch / counting->size();
  const std::int64_t rows = local / c.micro_batches;
  Trace trace;
  trace.activation_estimate = model.memory(&optimizer, rows, kSequence).activations;
  for (int step = 1; step <= kSteps; ++step) {
    // Deterministic tokens that differ from step to step.
    const at::Tensor tokens =
        (at::arange(kGlobalBatch * (kSequence + 1), at::kLong).view({kGlobalBatch, -1}) *
             (step + 2) +
         step)
            .remainder(config.vocabulary);
    model.zero_gradients();
    double loss = 0;
    for (std::int64_t micro = 0; micro < c.micro_batches; ++micro) {
      const at::Tensor rows_tokens =
          tokens.narrow(0, counting->rank() * local + micro * rows, rows);
      const at::Tensor targets = rows_tokens.narrow(1, 1, kSequence);
      const double share = 1.0 / static_cast<double>(c.micro_batches);
      loss += model.forward_backward(
          rows_tokens.narrow(1, 0, kSequence),
          [&](const at::Tensor& logits) {
            return at::cross_entropy_loss(logits.reshape({-1, config.vocabulary}).to(at::kFloat),
                                          targets.reshape({-1})) *
                   share;
          },
          share);
    }
    model.reduce_gradients();
    const AuxiliaryTotals auxiliary = model.take_auxiliary_totals();
    trace.losses.push_back(loss);
    trace.auxiliary_losses.push_back(auxiliary.loss);
    std::vector<at::Tensor> counts;
    for (const auto& [layer, tokens_per_expert] : auxiliary.expert_tokens) {
      counts.push_back(tokens_per_expert.reshape({-1}));
    }
    trace.expert_tokens.push_back(counts.empty() ? at::Tensor() : at::cat(counts));
    trace.gradient_norms.push_back(optimizer.step(1e-2));
  }
  for (Fsdp* stage : model.stages()) trace.final_shards.push_back(stage->weight_shard().clone());
  trace.all_gathers = counting->all_gathers;
  trace.reduce_scatters = counting->reduce_scatters;
  trace.all_reduces = counting->all_reduces;
  return trace;
}

void expect_same_run(const Case& c) {
  SCOPED_TRACE(c.describe());
  const Trace plain = train(c, ActivationCheckpointing::kNone);
  for (auto mode : {ActivationCheckpointing::kStages, ActivationCheckpointing::kLayers}) {
    SCOPED_TRACE(std::string("checkpointing ") + activation_checkpointing_name(mode));
    const Trace checkpointed = train(c, mode);
    for (int step = 0; step < kSteps; ++step) {
      // Bitwise: EXPECT_EQ on doubles, not EXPECT_NEAR.
      EXPECT_EQ(checkpointed.losses[step], plain.losses[step]) << "step " << step + 1;
      EXPECT_EQ(checkpointed.auxiliary_losses[step], plain.auxiliary_losses[step])
          << "step " << step + 1;
      EXPECT_EQ(checkpointed.gradient_norms[step], plain.gradient_norms[step])
          << "step " << step + 1;
      ASSERT_EQ(checkpointed.expert_tokens[step].defined(), plain.expert_tokens[step].defined());
      if (plain.expert_tokens[step].defined()) {
        EXPECT_TRUE(checkpointed.expert_tokens[step].equal(plain.expert_tokens[step]));
      }
    }
    ASSERT_EQ(checkpointed.final_shards.size(), plain.final_shards.size());
    for (std::size_t s = 0; s < plain.final_shards.size(); ++s) {
      EXPECT_TRUE(checkpointed.final_shards[s].equal(plain.final_shards[s])) << "stage " << s;
    }
    // Recomputation reuses the restores the schedule does anyway.
    EXPECT_EQ(checkpointed.all_gathers, plain.all_gathers);
    EXPECT_EQ(checkpointed.reduce_scatters, plain.reduce_scatters);
    EXPECT_EQ(checkpointed.all_reduces, plain.all_reduces);
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

Case with(std::function<void(Case&)> change) {
  Case c;
  change(c);
  return c;
}

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
TEST(ActivationCheckpointing, StepPeakMemoryFallsAndTheEstimateHolds) {
  models::LlamaConfig config;
  config.vocabulary = 2048;
  config.hidden = 256;
  config.heads = 2;
  config.intermediate = 688;
  config.layers = 4;
  config.max_sequence = 256;
  const at::Tensor tokens =
      (at::arange(2 * 257, at::kLong).view({2, 257}) * 37).remainder(config.vocabulary);
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
    measured[mode] = {step_peak_bytes(model, tokens, config.vocabulary),
                      model.memory(nullptr, 2, 256).activations};
  }
  ASSERT_GT(launch::resident_memory().peak, 0) << "no /proc/self/status";
  const auto [plain, plain_estimate] = measured[ActivationCheckpointing::kNone];
  const auto [layers, layers_estimate] = measured[ActivationCheckpointing::kLayers];
  if (testing::runtime().rank() == 0) {
    std::printf(
        "[ memory   ] step peak %lld MiB without checkpointing (estimate %lld), %lld MiB "
        "with layers (estimate %lld)\n",
        static_cast<long long>(plain >> 20), static_cast<long long>(plain_estimate >> 20),
        static_cast<long long>(layers >> 20), static_cast<long long>(layers_estimate >> 20));
  }
  EXPECT_LT(layers, plain * 6 / 10);
  for (const auto& [peak, estimate] :
       {measured[ActivationCheckpointing::kNone], measured[ActivationCheckpointing::kLayers]}) {
    EXPECT_GT(estimate, peak / 2);
    EXPECT_LT(estimate, peak * 2);
  }
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
