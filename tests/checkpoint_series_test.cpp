// The series of checkpoints (checkpoint_series.h): which steps are kept, the
// step directory names, and the 'latest' pointer taken as untrusted input.
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <string>

#include "fsdp/checkpoint/checkpoint_error.h"
#include "fsdp/checkpoint/checkpoint_series.h"

namespace fsdp::checkpoint {
namespace {

namespace fs = std::filesystem;

std::string refusal(const std::function<void()>& work) {
  try {
    work();
  } catch (const CheckpointError& error) {
    return error.what();
  }
  return "(no error)";
}

TEST(CheckpointSeries, KeepsTheLastKAndEveryMth) {
  std::vector<std::int64_t> steps;
  for (std::int64_t s = 10; s <= 100; s += 10) steps.push_back(s);
  EXPECT_EQ(steps_to_prune(steps, 100, 3, 0),
            (std::vector<std::int64_t>{10, 20, 30, 40, 50, 60, 70}));
  EXPECT_EQ(steps_to_prune(steps, 100, 3, 25), (std::vector<std::int64_t>{10, 20, 30, 40, 60, 70}));
  EXPECT_EQ(steps_to_prune(steps, 100, 0, 0), std::vector<std::int64_t>{});  // 0: keep all
  // 'latest' is never pruned, even when a later step exists (a resumed branch).
  EXPECT_EQ(steps_to_prune(steps, 50, 1, 0),
            (std::vector<std::int64_t>{10, 20, 30, 40, 60, 70, 80, 90}));
}

TEST(CheckpointSeries, StepDirectoryNamesSortByStep) {
  EXPECT_EQ(step_directory_name(80), "step-00000080");
  EXPECT_EQ(step_directory_name(123456789), "step-123456789");
  EXPECT_EQ(step_of_directory_name("step-00000080"), 80);
  EXPECT_EQ(step_of_directory_name("step-123456789"), 123456789);
  for (const std::string bad : {"step-80", "step-0000008x", "step-00000080/", "../step-00000080",
                                "step-0000000000000000000000001", "latest", ""}) {
    EXPECT_EQ(step_of_directory_name(bad), -1) << bad;
  }
}

TEST(CheckpointSeries, LatestPointerIsCheckedLikeAnyInput) {
  const fs::path series = fs::path(::testing::TempDir()) / "fsdp_series_test";
  fs::remove_all(series);
  fs::create_directories(series / "step-00000010");
  publish_latest(series, 10);
  EXPECT_EQ(latest_checkpoint(series), series / "step-00000010");
  EXPECT_EQ(resolve_checkpoint(series), series / "step-00000010");
  EXPECT_EQ(series_steps(series), std::vector<std::int64_t>{10});

  const auto pointer = series / kLatestFileName;
  std::ofstream(pointer) << "../../etc\n";
  EXPECT_NE(refusal([&] { latest_checkpoint(series); })
                .find("latest: expected a step directory name such as step-00000100, found "
                      "\"../../etc\""),
            std::string::npos);
  std::ofstream(pointer) << "step-00000020\n";  // never completed
  EXPECT_NE(refusal([&] { latest_checkpoint(series); })
                .find("latest names step-00000020, but " + (series / "step-00000020").string() +
                      " is not there"),
            std::string::npos);
  fs::remove(pointer);
  ASSERT_EQ(mkfifo(pointer.c_str(), 0600), 0);
  EXPECT_NE(refusal([&] { latest_checkpoint(series); }).find("latest: not a regular file"),
            std::string::npos);
  fs::remove(pointer);

  // A series directory holds only its own: anything else is named, never deleted.
  publish_latest(series, 10);
  std::ofstream(series / "notes.txt") << "mine";
  EXPECT_NE(refusal([&] {
              check_series_directory(series);
            }).find("holds files this runtime did not write (notes.txt)"),
            std::string::npos);
  fs::remove(series / "notes.txt");
  // An interrupted save's leftover, with a rank file but no index yet.
  fs::create_directories(series / "step-00000030.partial");
  std::ofstream(series / "step-00000030.partial" / "rank-00000-of-00002.safetensors") << "x";
  EXPECT_EQ(refusal([&] { check_series_directory(series); }), "(no error)");
  remove_interrupted_saves(series);
  EXPECT_FALSE(fs::exists(series / "step-00000030.partial"));
  EXPECT_TRUE(fs::exists(series / "step-00000010"));
  fs::remove_all(series);
}

}  // namespace
}  // namespace fsdp::checkpoint
