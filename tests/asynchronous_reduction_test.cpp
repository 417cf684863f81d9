// Asynchronous gradient reduction (MultiStageOptions::asynchronous_reduction)
// changes when a stage's reduce-scatter is waited for, never what it
// computes: at every world size the run prints bitwise the losses, router
// losses, expert counts and gradient norms of the blocking run, ends with
// the same shards and issues the same collectives -- across ZeRO 2/3,
// prefetch, micro-batches (whose reductions accumulate through a temporary),
// MoE, tied parameters with shared buffers, several layers per stage,
// activation checkpointing and bfloat16. And the reductions in flight are
// polled during the previous stage's backward (Note [Progress in the
// backward]), which the blocking run never does.
#include <gtest/gtest.h>

#include <stdexcept>
#include <tuple>

#include "fsdp/models/llama.h"
#include "fsdp/stages/multi_stage_model.h"
#include "mpi_test_environment.h"
#include "training_trace.h"

namespace fsdp::stages {
namespace {

using namespace testing_trace;

// `overlaps`: whether a reduction can be in flight during a backward (not
// with a single gradient buffer, which the next stage must wait for).
void expect_same_as_blocking(Case c, ActivationCheckpointing mode = ActivationCheckpointing::kNone,
                             bool overlaps = true) {
  c.asynchronous_reduction = false;
  SCOPED_TRACE(c.describe() + ", checkpointing " + activation_checkpointing_name(mode));
  const Trace blocking = train(c, mode);
  c.asynchronous_reduction = true;
  const Trace asynchronous = train(c, mode);
  expect_same_trace(blocking, asynchronous);
  EXPECT_GT(blocking.reduce_scatters, 0);
  EXPECT_EQ(blocking.reduce_scatter_polls, 0);
  if (overlaps) {
    EXPECT_GT(asynchronous.reduce_scatter_polls, 0);
  } else {
    EXPECT_EQ(asynchronous.reduce_scatter_polls, 0);
  }
}

class AsynchronousReductionMatrix
    : public ::testing::TestWithParam<std::tuple<int, bool, std::int64_t>> {};

TEST_P(AsynchronousReductionMatrix, SameLossesGradientsWeightsAndCollectives) {
  Case c;
  c.zero_stage = std::get<0>(GetParam());
  c.prefetch = std::get<1>(GetParam());
  c.experts = std::get<2>(GetParam());
  c.micro_batches = 2;
  expect_same_as_blocking(c);
}

INSTANTIATE_TEST_SUITE_P(ZeroPrefetchMoe, AsynchronousReductionMatrix,
                         ::testing::Combine(::testing::Values(2, 3), ::testing::Bool(),
                                            ::testing::Values<std::int64_t>(0, 4)));

TEST(AsynchronousReduction, TiedEmbeddingsSharedBuffersPrefetch) {
  expect_same_as_blocking(
      with([](Case& c) { c.tied = true, c.shared_buffers = 2, c.prefetch = true; }));
}
TEST(AsynchronousReduction, OneSharedGradientBufferStillEqual) {
  // The next stage must wait for the reduction to free the buffer: no
  // overlap, but the same result.
  expect_same_as_blocking(with([](Case& c) { c.shared_buffers = 1, c.micro_batches = 3; }),
                          ActivationCheckpointing::kNone, /*overlaps=*/false);
}
TEST(AsynchronousReduction, TwoLayersPerStageBFloat16) {
  expect_same_as_blocking(
      with([](Case& c) { c.layers_per_stage = 2, c.bfloat16 = true, c.experts = 4; }));
}
TEST(AsynchronousReduction, WithActivationCheckpointing) {
  for (auto mode : {ActivationCheckpointing::kStages, ActivationCheckpointing::kLayers}) {
    expect_same_as_blocking(with([](Case& c) { c.experts = 4, c.micro_batches = 2; }), mode);
  }
}

TEST(AsynchronousReduction, TakesTwoGradientBuffersAndNeedsZeroTwoOrThree) {
  const models::LlamaConfig config = config_for(Case{});
  MultiStageOptions options;
  options.zero_stage = 3;
  options.asynchronous_reduction = true;
  MultiStageModel model(models::build_llama_layers(config), testing::runtime().process_group(),
                        options);
  EXPECT_EQ(model.options().shared_gradient_buffers, 2);
  options.asynchronous_reduction = false;
  MultiStageModel blocking(models::build_llama_layers(config), testing::runtime().process_group(),
                           options);
  EXPECT_EQ(blocking.options().shared_gradient_buffers, 1);

  options.zero_stage = 1;
  options.asynchronous_reduction = true;
  try {
    MultiStageModel refused(models::build_llama_layers(config), testing::runtime().process_group(),
                            options);
    ADD_FAILURE() << "ZeRO-1 with asynchronous reduction was accepted";
  } catch (const std::invalid_argument& error) {
    EXPECT_NE(std::string(error.what()).find("asynchronous_reduction needs zero_stage 2 or 3"),
              std::string::npos)
        << error.what();
  }
}

}  // namespace
}  // namespace fsdp::stages
