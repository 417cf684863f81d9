// run_agreeing_on_failure (fsdp/collective_errors.h): when one rank's work
// fails, every rank throws the same kind of fsdp::Error, with that rank's
// message and number, so that a harness can catch a CheckpointError as such
// on every rank; exceptions that are not the runtime's become RankFailedError.
#include <gtest/gtest.h>

#include <new>
#include <string>

#include "fsdp/collective_errors.h"
#include "mpi_test_environment.h"

namespace fsdp {
namespace {

// The error every rank caught when `failing` threw `thrown` (a function that throws).
template <typename Expected, typename Throw>
void expect_agreed(int failing, Throw thrown, const std::string& message) {
  auto& group = *testing::runtime().process_group();
  try {
    run_agreeing_on_failure(group, [&] {
      if (group.rank() == failing) thrown();
    });
    ADD_FAILURE() << "no error agreed";
  } catch (const Expected& error) {
    EXPECT_EQ(error.failing_rank(), failing);
    EXPECT_EQ(std::string(error.what()), "rank " + std::to_string(failing) + ": " + message);
  }
}

TEST(Agreement, EveryRankThrowsTheFailingRanksKindAndMessage) {
  const int last = testing::runtime().world_size() - 1;
  expect_agreed<CheckpointError>(
      last, [] { throw CheckpointError("bad.safetensors: short"); }, "bad.safetensors: short");
  expect_agreed<DataError>(
      0, [] { throw DataError("train.npy: token 3 is 99"); }, "train.npy: token 3 is 99");
  expect_agreed<ConfigurationError>(
      last, [] { throw ConfigurationError("hidden 7"); }, "hidden 7");
  expect_agreed<NotRestoredError>(
      0, [] { throw NotRestoredError("stage 'x'"); }, "stage 'x'");
  expect_agreed<CollectiveError>(
      last, [] { throw CollectiveTimeoutError("all_gather"); }, "all_gather");
  // Not the runtime's own errors: kind kOther, and still caught as fsdp::Error.
  expect_agreed<RankFailedError>(
      last, [] { throw std::bad_alloc(); }, "std::bad_alloc");
  expect_agreed<Error>(
      0, [] { throw std::runtime_error("disk on fire"); }, "disk on fire");
}

TEST(Agreement, TheLowestFailingRankSpeaksAndNobodyHangs) {
  auto& group = *testing::runtime().process_group();
  try {
    run_agreeing_on_failure(
        group, [&] { throw CheckpointError("seen by rank " + std::to_string(group.rank())); });
    ADD_FAILURE() << "no error agreed";
  } catch (const CheckpointError& error) {
    EXPECT_EQ(error.failing_rank(), 0);
    EXPECT_STREQ(error.what(), "rank 0: seen by rank 0");
  }
  EXPECT_NO_THROW(run_agreeing_on_failure(group, [] {}));
}

}  // namespace
}  // namespace fsdp
