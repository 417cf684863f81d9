// fsdp-train's batches from token files (fsdp/launch/training_data.h), as the
// ranks read them: at every world size and micro-batch count, the rows all
// ranks read in a step, gathered, are exactly the global batch a single rank
// reads alone; draws cross epoch boundaries inside a batch, every epoch uses
// each window once; and the data is read from the file, window by window.
#include <gtest/gtest.h>

#include <ATen/ATen.h>

#include <set>

#include "checkpoint_test_support.h"
#include "fsdp/launch/training_data.h"
#include "fsdp/torch_interop.h"
#include "mpi_test_environment.h"
#include "token_file_support.h"

namespace fsdp::launch {
namespace {

constexpr std::int64_t kWindows = 31;
constexpr std::int64_t kWindowTokens = 9;  // --seq-len 8

// Token i of the stream is i, so a window is identified by its first token.
class TrainingBatches : public ::testing::Test {
 protected:
  TrainingBatches() : directory_(*testing::runtime().process_group(), "training_data") {
    auto& group = *testing::runtime().process_group();
    if (group.rank() == 0) {
      std::vector<std::int32_t> stream(kWindows * kWindowTokens + 4);
      for (std::size_t i = 0; i < stream.size(); ++i) stream[i] = static_cast<std::int32_t>(i);
      testing::write_npy(directory_ / "train.npy", stream, "<i4");
    }
    group.barrier();
    options_.data = (directory_ / "train.npy").string();
    options_.sequence_length = kWindowTokens - 1;
    options_.batch = 12;
    options_.seed = 3;
  }

  testing::SharedDirectory directory_;
  TrainOptions options_;
};

TEST_F(TrainingBatches, RanksTogetherReadTheGlobalBatch) {
  auto& runtime = testing::runtime();
  const int world = runtime.world_size();
  for (const std::int64_t micro_batches : {1, 3}) {
    if (options_.batch % (world * micro_batches) != 0) continue;
    options_.micro_batches = micro_batches;
    const TrainingData data(options_);
    std::set<std::int64_t> epoch_windows;
    std::int64_t draws = 0;
    for (std::int64_t step = 1; step <= 8; ++step) {  // 96 draws: 3 epochs and a part
      std::vector<at::Tensor> mine;
      for (std::int64_t micro = 0; micro < micro_batches; ++micro) {
        mine.push_back(data.micro_batch(step, runtime.rank(), world, micro));
      }
      // Gathered in rank order: [batch, window] on every rank.
      auto gathered = at::zeros({options_.batch, kWindowTokens}, at::kLong);
      gathered.narrow(0, runtime.rank() * (options_.batch / world), options_.batch / world)
          .copy_(at::cat(mine));
      runtime.host_group()->all_gather_in_place(span_of(gathered));
      const auto alone = data.batch_rows(step, 0, options_.batch);
      ASSERT_TRUE(at::equal(gathered, alone))
          << "step " << step << ", " << micro_batches << " micro-batch(es)";
      // Each row is a window of the file: first token w * 9, then consecutive.
      const auto first = alone.select(1, 0);
      ASSERT_TRUE(at::equal(alone, first.view({-1, 1}) + at::arange(kWindowTokens, at::kLong)));
      for (std::int64_t row = 0; row < options_.batch; ++row, ++draws) {
        const std::int64_t start = first[row].item<std::int64_t>();
        ASSERT_EQ(start % kWindowTokens, 0);
        EXPECT_TRUE(epoch_windows.insert(start / kWindowTokens).second)
            << "window " << start / kWindowTokens << " twice in one epoch";
        if (epoch_windows.size() == static_cast<std::size_t>(kWindows)) epoch_windows.clear();
      }
    }
    EXPECT_EQ(draws, 96);
    EXPECT_EQ(epoch_windows.size(), static_cast<std::size_t>(96 % kWindows));
  }
}

TEST_F(TrainingBatches, AnotherSeedDrawsAnotherOrder) {
  const TrainingData data(options_);
  options_.seed = 4;
  const TrainingData other(options_);
  EXPECT_FALSE(at::equal(data.batch_rows(1, 0, 12), other.batch_rows(1, 0, 12)));
}

}  // namespace
}  // namespace fsdp::launch
