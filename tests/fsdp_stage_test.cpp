// The per-stage FSDP object at world sizes 1-4: restore, the restored-state
// check, the inspector, gradient reduction, bfloat16 buffers. Data are
// integer-valued wherever possible, so comparisons are exact.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <c10/util/BFloat16.h>

#include "fsdp/fsdp.h"
#include "fsdp/inspector.h"
#include "fsdp/torch_interop.h"
#include "mpi_test_environment.h"

namespace fsdp {
namespace {

std::shared_ptr<ProcessGroup> group() { return testing::runtime().process_group(); }
int rank() { return group()->rank(); }
int ranks() { return group()->size(); }

// Several shapes, a zero-element and a scalar parameter; alignment 4 makes
// parameters straddle shards at every world size > 1.
std::vector<ParameterSpec> test_parameters() {
  return {{"embedding", {13, 7}},
          {"empty", {0, 3}},
          {"norm", {7}},
          {"mlp.router.bias", {5}},
          {"experts.gate_up_proj", {3, 10, 7}},
          {"scale", {}}};
}

FsdpOptions test_options(c10::ScalarType compute = at::kFloat) {
  FsdpOptions options;
  options.compute_dtype = element_type_of(compute);
  options.alignment = 4;
  return options;
}

// Parameter p's element i is (p + 1) * 100000 + i, or, when the values must be
// exact in bfloat16 (8-bit mantissa), (p + 1) * 16 + i % 16.
// Elements [begin, end) of parameter p.
at::Tensor true_values(std::size_t parameter, ElementRange range, bool bfloat16_exact) {
  const at::Tensor index = at::arange(range.begin, range.end, at::kLong);
  return bfloat16_exact
             ? index.remainder(16)
                   .add(static_cast<std::int64_t>(parameter + 1) * 16)
                   .to(at::kDouble)
             : index.add(static_cast<std::int64_t>(parameter + 1) * 100000).to(at::kDouble);
}

at::Tensor expected_parameter(const FlatLayout& layout, std::size_t p, bool bfloat16_exact) {
  const ParameterSlot& slot = layout.parameters()[p];
  return true_values(p, {0, slot.numel}, bfloat16_exact).view(slot.shape);
}

// What an initialiser or loader does: write this rank's owned slices of the shard.
void fill_shard(Fsdp& stage, bool bfloat16_exact) {
  for (const OwnedSlice& slice : stage.layout().owned_slices(rank())) {
    stage.weight_shard()
        .narrow(0, slice.shard_range.begin, slice.shard_range.size())
        .copy_(true_values(slice.parameter_index, slice.parameter_range, bfloat16_exact));
  }
  stage.invalidate();
}

void expect_all_views_exact(const Fsdp& stage, bool bfloat16_exact) {
  const FlatLayout& layout = stage.layout();
  for (std::size_t p = 0; p < layout.parameters().size(); ++p) {
    const ParameterSlot& slot = layout.parameters()[p];
    const at::Tensor view = stage.parameter(slot.name);
    EXPECT_EQ(view.sizes().vec(), slot.shape) << slot.name;
    EXPECT_EQ(view.scalar_type(), scalar_type_of(stage.options().compute_dtype)) << slot.name;
    EXPECT_TRUE(view.detach().to(at::kDouble).equal(expected_parameter(layout, p, bfloat16_exact)))
        << slot.name << " on rank " << rank();
  }
  // Padding is zero in the buffer after a restore.
  const std::int64_t padding = layout.padded_numel() - layout.unpadded_numel();
  EXPECT_EQ(stage.weight_buffer()
                .narrow(0, layout.unpadded_numel(), padding)
                .count_nonzero()
                .item<std::int64_t>(),
            0);
}

TEST(Fsdp, BuffersAreZeroedAndShardsSizedByTheLayout) {
  Fsdp stage("decoder.0", test_parameters(), group(), test_options());
  const FlatLayout& layout = stage.layout();
  EXPECT_EQ(layout.unpadded_numel(), 91 + 0 + 7 + 5 + 210 + 1);
  EXPECT_EQ(stage.weight_shard().numel(), layout.shard_numel());
  EXPECT_EQ(stage.gradient_shard().numel(), layout.shard_numel());
  EXPECT_EQ(stage.weight_buffer().numel(), layout.padded_numel());
  EXPECT_EQ(stage.weight_buffer().count_nonzero().item<std::int64_t>(), 0);
  EXPECT_EQ(stage.gradient_buffer().count_nonzero().item<std::int64_t>(), 0);
  EXPECT_FALSE(stage.is_restored());
  // Views alias the buffer (no copies), gradients alias the gradient buffer.
  const at::Tensor& norm = stage.parameter_views()[layout.parameter_index("norm")];
  EXPECT_EQ(norm.data_ptr(), static_cast<char*>(stage.weight_buffer().data_ptr()) +
                                 layout.parameter("norm").flat_range.begin * sizeof(float));
  EXPECT_EQ(norm.grad().data_ptr(), static_cast<char*>(stage.gradient_buffer().data_ptr()) +
                                        layout.parameter("norm").flat_range.begin * sizeof(float));
  EXPECT_EQ(stage.parameter_views()[layout.parameter_index("empty")].sizes().vec(),
            (std::vector<std::int64_t>{0, 3}));
}

TEST(Fsdp, RestoreGivesExactValuesInEveryViewOnEveryRank) {
  Fsdp stage("decoder.0", test_parameters(), group(), test_options());
  fill_shard(stage, false);
  stage.restore_parameters();
  EXPECT_TRUE(stage.is_restored());
  expect_all_views_exact(stage, false);
}

TEST(Fsdp, RestoreIsIdempotentAndInvalidateForcesANewOne) {
  // A bfloat16 buffer keeps a separate float32 shard, so a shard change is
  // invisible in the buffer until the next real restore.
  Fsdp stage("decoder.0", test_parameters(), group(), test_options(at::kBFloat16));
  ASSERT_FALSE(stage.shard_aliases_buffer());
  fill_shard(stage, true);
  stage.restore_parameters();
  // Change the shard without invalidating: a restored stage does not restore again.
  stage.weight_shard().add_(1);
  stage.restore_parameters();
  expect_all_views_exact(stage, true);
  // After invalidate(), the next restore picks the change up everywhere.
  stage.invalidate();
  stage.restore_parameters();
  const std::size_t norm = stage.layout().parameter_index("norm");
  EXPECT_TRUE(stage.parameter("norm")
                  .to(at::kDouble)
                  .equal(expected_parameter(stage.layout(), norm, true) + 1));
}

// Note [Shard aliasing]: with equal dtypes the shard is this rank's slice of
// the buffer; otherwise (mixed precision, poisoning) it is memory of its own.
TEST(Fsdp, ShardAliasesItsBufferSliceOnlyWhenDtypesMatch) {
  Fsdp same("decoder.0", test_parameters(), group(), test_options());
  ASSERT_TRUE(same.shard_aliases_buffer());
  const ElementRange own = same.layout().shard_range(rank());
  EXPECT_EQ(same.weight_shard().data_ptr(),
            static_cast<char*>(same.weight_buffer().data_ptr()) + own.begin * sizeof(float));
  fill_shard(same, false);
  EXPECT_FALSE(same.is_restored());
  same.restore_parameters();
  expect_all_views_exact(same, false);
  // The optimizer's path: update the shard, invalidate, restore.
  same.weight_shard().add_(1);
  same.invalidate();
  same.restore_parameters();
  EXPECT_TRUE(
      same.parameter("norm")
          .to(at::kDouble)
          .equal(expected_parameter(same.layout(), same.layout().parameter_index("norm"), false) +
                 1));

  Fsdp mixed("decoder.0", test_parameters(), group(), test_options(at::kBFloat16));
  EXPECT_FALSE(mixed.shard_aliases_buffer());
  EXPECT_EQ(mixed.weight_shard().scalar_type(), at::kFloat);
  FsdpOptions poisoned = test_options();
  poisoned.poison_released_buffer = true;
  EXPECT_FALSE(Fsdp("decoder.0", test_parameters(), group(), poisoned).shard_aliases_buffer());
}

TEST(Fsdp, ReadingAnUnrestoredParameterNamesStageAndParameter) {
  Fsdp stage("decoder.3", test_parameters(), group(), test_options());
  fill_shard(stage, false);
  try {
    stage.parameter("mlp.router.bias");
    ADD_FAILURE() << "an unrestored parameter was returned";
  } catch (const NotRestoredError& error) {
    const std::string message = error.what();
    EXPECT_NE(message.find("stage 'decoder.3'"), std::string::npos) << message;
    EXPECT_NE(message.find("parameter 'mlp.router.bias'"), std::string::npos) << message;
    EXPECT_NE(message.find("restore_parameters()"), std::string::npos) << message;
  }
  stage.restore_parameters();
  EXPECT_NO_THROW(stage.parameter("mlp.router.bias"));
  stage.release();
  EXPECT_THROW(stage.assert_restored("norm"), NotRestoredError);
  EXPECT_THROW(stage.parameter("norm"), NotRestoredError);
  // An unknown name is a different error, naming it.
  try {
    stage.parameter("mlp.router.weight");
    ADD_FAILURE() << "an unknown parameter was returned";
  } catch (const std::out_of_range& error) {
    EXPECT_NE(std::string(error.what()).find("'mlp.router.weight'"), std::string::npos);
  }
}

// The seed-000 situation: weights loaded into the shards, buffer never
// restored. The inspector must read the truth without touching the buffer.
void check_inspector_reads_truth_before_restore(c10::ScalarType compute) {
  SCOPED_TRACE(c10::toString(compute));
  const bool bfloat16_exact = compute == at::kBFloat16;
  Fsdp stage("decoder.0", test_parameters(), group(), test_options(compute));
  fill_shard(stage, bfloat16_exact);
  const FlatLayout& layout = stage.layout();
  for (std::size_t p = 0; p < layout.parameters().size(); ++p) {
    const std::string& name = layout.parameters()[p].name;
    const at::Tensor expected = expected_parameter(layout, p, bfloat16_exact);
    const at::Tensor values = read_parameter(stage, name);
    EXPECT_EQ(values.sizes().vec(), layout.parameters()[p].shape) << name;
    EXPECT_TRUE(values.to(at::kDouble).equal(expected)) << name;

    const ParameterStatistics stats = parameter_statistics(stage, name);
    EXPECT_EQ(stats.numel, expected.numel()) << name;
    EXPECT_EQ(stats.nan_count, 0);
    EXPECT_EQ(stats.nonzero_count, expected.count_nonzero().item<std::int64_t>());
    if (expected.numel() == 0) continue;
    EXPECT_EQ(stats.min, expected.min().item<double>()) << name;
    EXPECT_EQ(stats.max, expected.max().item<double>()) << name;
    EXPECT_EQ(stats.abs_max, expected.abs().max().item<double>()) << name;
    EXPECT_EQ(stats.sum, expected.sum().item<double>()) << name;  // integers: exact in float64
    EXPECT_DOUBLE_EQ(stats.mean, expected.mean().item<double>()) << name;
    if (expected.numel() > 1) {
      EXPECT_NEAR(stats.std, expected.std().item<double>(), 1e-9 * stats.std) << name;
    }
  }
  // The buffer still holds zeros: all of it, or, when the shard aliases this
  // rank's slice (Note [Shard aliasing]), everything outside that slice.
  EXPECT_FALSE(stage.is_restored());
  at::Tensor not_gathered = stage.weight_buffer().clone();
  if (stage.shard_aliases_buffer()) {
    const ElementRange own = layout.shard_range(rank());
    not_gathered.narrow(0, own.begin, own.size()).zero_();
  }
  EXPECT_EQ(not_gathered.count_nonzero().item<std::int64_t>(), 0);
}

TEST(Fsdp, InspectorReadsTheTruthWhileTheBufferHoldsZeros) {
  check_inspector_reads_truth_before_restore(at::kBFloat16);
  check_inspector_reads_truth_before_restore(at::kFloat);
}

TEST(Fsdp, InspectorCountsNaNAndInfWhereverTheyLive) {
  Fsdp stage("decoder.0", test_parameters(), group(), test_options());
  fill_shard(stage, false);
  const FlatLayout& layout = stage.layout();
  const std::size_t experts = layout.parameter_index("experts.gate_up_proj");
  // Poison the first element each rank owns of the experts parameter.
  int poisoned = 0;
  for (const OwnedSlice& piece : layout.placements(experts)) {
    if (piece.rank == rank()) {
      stage.weight_shard()[piece.shard_range.begin] = std::nan("");
      if (piece.shard_range.size() > 1)
        stage.weight_shard()[piece.shard_range.begin + 1] = INFINITY;
    }
    poisoned += 1;
  }
  const ParameterStatistics stats = parameter_statistics(stage, "experts.gate_up_proj");
  EXPECT_EQ(stats.nan_count, poisoned);
  EXPECT_GE(stats.inf_count, 1);
  EXPECT_EQ(stats.max, INFINITY);
  EXPECT_FALSE(std::isnan(stats.min)) << "NaN must not hide the other values";
}

TEST(Fsdp, PlacementsSayWhichRankHoldsWhat) {
  Fsdp stage("decoder.0", test_parameters(), group(), test_options());
  const std::vector<OwnedSlice> placements =
      parameter_placements(stage.layout(), "experts.gate_up_proj");
  std::int64_t covered = 0;
  for (const OwnedSlice& piece : placements) {
    EXPECT_EQ(piece.parameter_range.begin, covered);
    covered = piece.parameter_range.end;
  }
  EXPECT_EQ(covered, 210);
  if (ranks() > 1) {
    EXPECT_GT(placements.size(), 1u) << "alignment 4 should split it";
  }
  const std::string text = describe_placements(stage.layout(), "experts.gate_up_proj");
  EXPECT_NE(text.find("rank " + std::to_string(placements.back().rank) + ": elements"),
            std::string::npos)
      << text;
  // The local part is a view of the shard.
  const at::Tensor part = owned_weight_part(stage, "experts.gate_up_proj");
  std::int64_t expected_local = 0;
  for (const OwnedSlice& piece : placements) {
    if (piece.rank == rank()) expected_local = piece.parameter_range.size();
  }
  EXPECT_EQ(part.numel(), expected_local);
}

TEST(Fsdp, BFloat16BufferRestoresExactlyAndRoundsLikeTorch) {
  Fsdp stage("decoder.0", test_parameters(), group(), test_options(at::kBFloat16));
  EXPECT_EQ(stage.weight_shard().scalar_type(), at::kFloat);
  EXPECT_EQ(stage.weight_buffer().scalar_type(), at::kBFloat16);
  fill_shard(stage, true);
  stage.restore_parameters();
  expect_all_views_exact(stage, true);

  // A value bfloat16 cannot hold is rounded once, to nearest even, as torch does.
  stage.weight_shard().fill_(1.0 + 1.0 / 512 + 1.0 / 1024);
  stage.invalidate();
  stage.restore_parameters();
  const float rounded = static_cast<float>(c10::BFloat16(1.0f + 1.0f / 512 + 1.0f / 1024));
  EXPECT_TRUE(stage.parameter("norm").to(at::kFloat).eq(rounded).all().item<bool>());
  EXPECT_NE(rounded, 1.0f + 1.0f / 512 + 1.0f / 1024);
}

// Gradient buffer filled with rank-dependent integers; the reduced gradient
// shard must hold the exact sum / average over ranks.
TEST(Fsdp, ReduceGradientsSumsAndAveragesExactly) {
  for (c10::ScalarType compute : {at::kFloat, at::kBFloat16}) {
    SCOPED_TRACE(c10::toString(compute));
    Fsdp stage("decoder.0", test_parameters(), group(), test_options(compute));
    const std::int64_t padded = stage.layout().padded_numel();
    // Element j of rank r's gradient buffer: r + (j % 8), exact in bfloat16.
    at::Tensor index = at::arange(padded, at::kLong);
    stage.gradient_buffer().copy_(index.remainder(8).add(rank()));
    at::Tensor rank_sum =
        index.remainder(8).mul(ranks()).add(ranks() * (ranks() - 1) / 2).to(at::kFloat);
    const ElementRange own = stage.layout().shard_range(rank());

    stage.reduce_gradients(GradientReduction::kSum);
    EXPECT_TRUE(stage.gradient_shard().equal(rank_sum.narrow(0, own.begin, own.size())));
    stage.reduce_gradients(GradientReduction::kAverage);
    at::Tensor average = rank_sum.div(static_cast<float>(ranks()));
    EXPECT_TRUE(stage.gradient_shard().equal(average.narrow(0, own.begin, own.size())));
    stage.reduce_gradients(GradientReduction::kSum, GradientUpdate::kAccumulate);
    EXPECT_TRUE(
        stage.gradient_shard().equal((average + rank_sum).narrow(0, own.begin, own.size())));
  }
}

TEST(Fsdp, AutogradAccumulatesIntoTheGradientBuffer) {
  Fsdp stage("decoder.0", test_parameters(), group(), test_options());
  fill_shard(stage, false);
  stage.restore_parameters();
  // d(loss)/d(view) = rank + 1 for every element of every parameter.
  auto backward = [&] {
    at::Tensor loss = at::zeros({}, at::kFloat);
    for (const ParameterSlot& slot : stage.layout().parameters()) {
      loss = loss + stage.parameter(slot.name).sum() * static_cast<float>(rank() + 1);
    }
    loss.backward();
  };
  backward();
  const std::int64_t unpadded = stage.layout().unpadded_numel();
  EXPECT_TRUE(stage.gradient_buffer().narrow(0, 0, unpadded).eq(rank() + 1).all().item<bool>());
  EXPECT_EQ(stage.gradient_buffer()
                .narrow(0, unpadded, stage.layout().padded_numel() - unpadded)
                .count_nonzero()
                .item<std::int64_t>(),
            0);
  backward();  // a second micro-batch adds, it does not replace
  EXPECT_TRUE(
      stage.gradient_buffer().narrow(0, 0, unpadded).eq(2 * (rank() + 1)).all().item<bool>());

  stage.reduce_gradients(GradientReduction::kAverage);
  // Mean over ranks of 2 (r + 1) = ranks + 1, on parameter elements; 0 on padding.
  const ElementRange own = stage.layout().shard_range(rank());
  const ElementRange padding = stage.layout().padding_in_shard(rank());
  for (std::int64_t i = 0; i < own.size(); ++i) {
    const bool is_padding = i >= padding.begin && i < padding.end;
    ASSERT_EQ(stage.gradient_shard()[i].item<float>(), is_padding ? 0.0f : ranks() + 1.0f) << i;
  }
  stage.zero_gradient_buffer();
  EXPECT_EQ(stage.gradient_buffer().count_nonzero().item<std::int64_t>(), 0);
  EXPECT_EQ(stage.parameter("norm").grad().count_nonzero().item<std::int64_t>(), 0);
}

TEST(Fsdp, PoisonedReleaseMakesStaleReadsLoudAndRestoreRepairsIt) {
  FsdpOptions options = test_options();
  options.poison_released_buffer = true;
  Fsdp stage("decoder.0", test_parameters(), group(), options);
  fill_shard(stage, false);
  stage.restore_parameters();
  const at::Tensor held_view = stage.parameter("norm");
  stage.release();
  EXPECT_TRUE(held_view.isnan().all().item<bool>());
  stage.restore_parameters();
  expect_all_views_exact(stage, false);
}

// The model starts bitwise the same at every world size: what the inspector
// reads back equals the pure function of (seed, name, index), rounded once.
TEST(Fsdp, InitializedWeightsAreTheSameAtEveryWorldSize) {
  std::vector<ParameterSpec> parameters = test_parameters();
  parameters[0].init = ParameterInit::normal(0.0, 0.02);
  parameters[2].init = ParameterInit::constant(1.0);
  parameters[4].init = ParameterInit::uniform(-0.5, 0.5);
  for (c10::ScalarType compute : {at::kFloat, at::kBFloat16}) {
    Fsdp stage("decoder.0", parameters, group(), test_options(compute));
    stage.initialize_weights(1234);
    EXPECT_FALSE(stage.is_restored());
    for (const ParameterSlot& slot : stage.layout().parameters()) {
      std::vector<double> expected(static_cast<std::size_t>(slot.numel));
      fill_initial_values(slot.init, parameter_stream_key(1234, slot.name), 0, slot.numel,
                          expected.data());
      const at::Tensor want = at::tensor(expected, at::kDouble).to(at::kFloat).view(slot.shape);
      EXPECT_TRUE(read_parameter(stage, slot.name).equal(want)) << slot.name;
    }
    const ElementRange padding = stage.layout().padding_in_shard(rank());
    EXPECT_EQ(stage.weight_shard()
                  .narrow(0, padding.begin, padding.size())
                  .count_nonzero()
                  .item<std::int64_t>(),
              0);
    stage.restore_parameters();
    EXPECT_TRUE(stage.parameter("embedding")
                    .to(at::kFloat)
                    .equal(read_parameter(stage, "embedding").to(compute).to(at::kFloat)));
  }
}

// The accounting is the formula, computed independently from the layout.
TEST(Fsdp, MemoryReportMatchesTheFormula) {
  for (c10::ScalarType compute : {at::kFloat, at::kBFloat16}) {
    Fsdp stage("decoder.0", test_parameters(), group(), test_options(compute));
    const FlatLayout& layout = stage.layout();
    const std::int64_t compute_size = compute == at::kFloat ? 4 : 2;
    const StageMemory memory = stage.memory();
    EXPECT_EQ(memory.weight_buffer, layout.padded_numel() * compute_size);
    EXPECT_EQ(memory.gradient_buffer, layout.padded_numel() * compute_size);
    EXPECT_EQ(memory.gradient_shard, layout.shard_numel() * 4);
    EXPECT_EQ(memory.weight_shard, stage.shard_aliases_buffer() ? 0 : layout.shard_numel() * 4);
    EXPECT_EQ(memory.total(), memory.weight_shard + memory.gradient_shard + memory.weight_buffer +
                                  memory.gradient_buffer);
  }
}

TEST(Fsdp, PrefetchedRestoreIsNotUsableUntilFinished) {
  Fsdp stage("decoder.0", test_parameters(), group(), test_options());
  fill_shard(stage, false);
  stage.begin_restore();
  EXPECT_TRUE(stage.restore_in_flight());
  EXPECT_FALSE(stage.is_restored());
  try {
    stage.assert_restored("norm");
    ADD_FAILURE() << "a parameter was usable while its all-gather was in flight";
  } catch (const NotRestoredError& error) {
    EXPECT_NE(std::string(error.what()).find("still in flight"), std::string::npos) << error.what();
  }
  stage.begin_restore();  // a second start is a no-op, not a second collective
  stage.restore_parameters();
  EXPECT_FALSE(stage.restore_in_flight());
  expect_all_views_exact(stage, false);
  // Releasing or invalidating with a restore in flight waits for it first.
  stage.release();
  stage.begin_restore();
  stage.invalidate();
  EXPECT_FALSE(stage.restore_in_flight());
  EXPECT_FALSE(stage.is_restored());
}

// Two stages take turns in one weight buffer and one gradient buffer
// (Note [Buffer ordering]): each sees its own weights when restored, and a
// stage cannot claim a buffer the other still holds.
TEST(Fsdp, SharedBuffersTakeTurnsAndRefuseToOverwrite) {
  const FsdpOptions options = test_options();
  const FlatLayout big(test_parameters(), ranks(), options.alignment);
  SharedStageBuffers shared;
  shared.weights = std::make_shared<StageBuffer>("shared weight buffer 0", big.padded_numel(),
                                                 ElementType::kFloat32, c10::Device(c10::kCPU));
  shared.gradients = std::make_shared<StageBuffer>("shared gradient buffer 0", big.padded_numel(),
                                                   ElementType::kFloat32, c10::Device(c10::kCPU));
  Fsdp first("stage.0", test_parameters(), group(), options, shared);
  Fsdp second("stage.1", {{"norm", {7}}, {"scale", {}}}, group(), options, shared);
  EXPECT_FALSE(first.shard_aliases_buffer());  // the buffer is overwritten while released
  EXPECT_EQ(first.memory().weight_buffer, 0);  // the model counts shared buffers once
  EXPECT_EQ(first.memory().weight_shard, first.layout().shard_numel() * 4);
  EXPECT_EQ(first.weight_buffer().data_ptr(), second.weight_buffer().data_ptr());
  fill_shard(first, false);
  second.weight_shard().fill_(-1.0);
  second.invalidate();

  first.restore_parameters();
  EXPECT_FALSE(second.may_begin_restore());
  try {
    second.restore_parameters();
    ADD_FAILURE() << "stage.1 overwrote the weights stage.0 still holds";
  } catch (const std::logic_error& error) {
    const std::string message = error.what();
    EXPECT_NE(message.find("stage 'stage.1' needs the shared weight buffer 0"), std::string::npos)
        << message;
    EXPECT_NE(message.find("stage 'stage.0' still holds"), std::string::npos) << message;
  }
  expect_all_views_exact(first, false);
  first.release();
  second.restore_parameters();
  EXPECT_TRUE(second.parameter("norm").eq(-1).all().item<bool>() || ranks() > 1);
  EXPECT_THROW(first.assert_restored("norm"), NotRestoredError);
  second.release();
  first.restore_parameters();  // its own weights again, from its shard
  expect_all_views_exact(first, false);

  // Gradients: a stage holds the shared gradient buffer from zeroing to reducing.
  first.zero_gradient_buffer();
  EXPECT_THROW(second.zero_gradient_buffer(), std::logic_error);
  first.reduce_gradients();
  second.zero_gradient_buffer();
  EXPECT_THROW(first.reduce_gradients(), std::logic_error);  // its gradients are gone
  second.reduce_gradients();
}

// The reduction in two halves (begin/finish) gives what the blocking one
// does, and holds the gradient buffer until it is finished: a stage sharing
// the buffer cannot claim it while the collective still reads it.
TEST(Fsdp, AsynchronousReductionEqualsTheBlockingOneAndHoldsItsBuffer) {
  const FsdpOptions options = test_options();
  const FlatLayout big(test_parameters(), ranks(), options.alignment);
  SharedStageBuffers shared;
  shared.gradients = std::make_shared<StageBuffer>("shared gradient buffer 0", big.padded_numel(),
                                                   ElementType::kFloat32, c10::Device(c10::kCPU));
  Fsdp first("stage.0", test_parameters(), group(), options, shared);
  Fsdp second("stage.1", {{"norm", {7}}, {"scale", {}}}, group(), options, shared);
  const std::int64_t padded = first.layout().padded_numel();
  const at::Tensor index = at::arange(padded, at::kLong);
  const at::Tensor rank_sum =
      index.remainder(8).mul(ranks()).add(ranks() * (ranks() - 1) / 2).to(at::kFloat);
  const ElementRange own = first.layout().shard_range(rank());
  const at::Tensor expected = rank_sum.narrow(0, own.begin, own.size());
  auto fill = [&] {
    first.zero_gradient_buffer();
    first.gradient_buffer().copy_(index.remainder(8).add(rank()));
  };

  fill();
  first.begin_reduce_gradients(GradientReduction::kSum);  // straight into the shard
  EXPECT_TRUE(first.reduce_in_flight());
  EXPECT_FALSE(first.may_claim_gradient_buffer());
  EXPECT_FALSE(second.may_claim_gradient_buffer());
  EXPECT_THROW(second.zero_gradient_buffer(), std::logic_error);
  first.progress();
  first.finish_reduce_gradients();
  EXPECT_FALSE(first.reduce_in_flight());
  EXPECT_TRUE(first.gradient_shard().equal(expected));
  EXPECT_TRUE(second.may_claim_gradient_buffer());

  // Accumulating goes through a temporary that finish adds into the shard.
  fill();
  first.begin_reduce_gradients(GradientReduction::kSum, GradientUpdate::kAccumulate);
  EXPECT_TRUE(first.gradient_shard().equal(expected));  // not yet added
  first.finish_reduce_gradients();
  EXPECT_TRUE(first.gradient_shard().equal(expected * 2));
  first.finish_reduce_gradients();  // nothing in flight: nothing happens
  EXPECT_TRUE(first.gradient_shard().equal(expected * 2));

  // Zeroing the shard or the buffer finishes a reduction in flight first.
  fill();
  first.begin_reduce_gradients(GradientReduction::kSum, GradientUpdate::kAccumulate);
  first.zero_gradient_shard();
  EXPECT_FALSE(first.reduce_in_flight());
  EXPECT_EQ(first.gradient_shard().count_nonzero().item<std::int64_t>(), 0);
  fill();
  first.begin_reduce_gradients(GradientReduction::kSum, GradientUpdate::kAccumulate);
  first.zero_gradient_buffer();
  EXPECT_FALSE(first.reduce_in_flight());
  EXPECT_TRUE(first.gradient_shard().equal(expected));
  first.reduce_gradients();  // gives the buffer up
  second.zero_gradient_buffer();
  second.reduce_gradients();
  EXPECT_GT(first.communication_statistics().reduce_seconds, 0);
}

TEST(Fsdp, SharedBufferTooSmallIsRejectedWithBothSizes) {
  SharedStageBuffers shared;
  shared.weights = std::make_shared<StageBuffer>("shared weight buffer 0", 8, ElementType::kFloat32,
                                                 c10::Device(c10::kCPU));
  try {
    Fsdp stage("stage.3", test_parameters(), group(), test_options(), shared);
    ADD_FAILURE() << "a stage was built on a buffer too small for it";
  } catch (const std::invalid_argument& error) {
    const std::string message = error.what();
    EXPECT_NE(message.find("stage 'stage.3'"), std::string::npos) << message;
    EXPECT_NE(message.find("holds 8 Float on cpu, but the stage needs at least"), std::string::npos)
        << message;
  }
}

TEST(Fsdp, LoadParameterWritesOnlyTheOwnedPart) {
  Fsdp stage("decoder.0", test_parameters(), group(), test_options());
  const at::Tensor values = at::arange(91, at::kFloat).view({13, 7});
  stage.load_parameter("embedding", values);
  EXPECT_TRUE(read_parameter(stage, "embedding").equal(values));
  stage.restore_parameters();
  EXPECT_TRUE(stage.parameter("embedding").equal(values));
  try {
    stage.load_parameter("embedding", at::zeros({7, 13}));
    ADD_FAILURE() << "a parameter was loaded from a tensor of the wrong shape";
  } catch (const std::invalid_argument& error) {
    const std::string message = error.what();
    EXPECT_NE(message.find("'embedding' has shape [13, 7]"), std::string::npos) << message;
    EXPECT_NE(message.find("[7, 13]"), std::string::npos) << message;
  }
}

TEST(Fsdp, RejectsADeviceTheGroupCannotServe) {
  FsdpOptions options = test_options();
  options.device = c10::Device(c10::DeviceType::CUDA, 0);
  if (group()->memory_location() == MemoryLocation::kCuda) options.device = c10::Device(c10::kCPU);
  try {
    Fsdp stage("decoder.0", test_parameters(), group(), options);
    ADD_FAILURE() << "a stage on the wrong device was created";
  } catch (const std::invalid_argument& error) {
    EXPECT_NE(std::string(error.what()).find("stage 'decoder.0'"), std::string::npos)
        << error.what();
  }
  options = test_options();
  options.compute_dtype = ElementType::kInt32;
  EXPECT_THROW(Fsdp("decoder.0", test_parameters(), group(), options), std::invalid_argument);
}

}  // namespace
}  // namespace fsdp
