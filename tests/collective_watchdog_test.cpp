// The watchdog's deadline logic (Note [Collective watchdog]) with fake probes
// and a fake clock; one test runs the real thread.
#include "fsdp/collective_watchdog.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace fsdp {
namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;

// A watchdog driven by hand: no thread, a clock the test moves, aborts recorded.
struct ManualWatchdog {
  std::chrono::steady_clock::time_point now{};
  std::vector<std::string> aborts;
  std::function<void()> group_check;
  CollectiveWatchdog watchdog{"rank 1/4 on host-a", "NCCL",
                              [this](const std::string& message) { aborts.push_back(message); },
                              [this] {
                                if (group_check) group_check();
                              },
                              CollectiveWatchdog::Options{milliseconds(100), [this] { return now; },
                                                          /*start_thread=*/false}};
};

TEST(CollectiveWatchdog, ForgetsCompletedCollectivesWithoutAborting) {
  ManualWatchdog manual;
  bool first_done = false;
  manual.watchdog.watch("all_gather_in_place of 8 float32", seconds(2), [&] { return first_done; });
  manual.watchdog.watch("reduce_scatter of 8 float32", seconds(2), [] { return true; });
  EXPECT_FALSE(manual.watchdog.check());
  EXPECT_EQ(manual.watchdog.outstanding(), 1u);
  first_done = true;
  manual.now += seconds(5);  // past the deadline, but complete: no abort
  EXPECT_FALSE(manual.watchdog.check());
  EXPECT_EQ(manual.watchdog.outstanding(), 0u);
  EXPECT_TRUE(manual.aborts.empty());
}

TEST(CollectiveWatchdog, AbortsACollectiveStillRunningAtItsDeadline) {
  ManualWatchdog manual;
  manual.watchdog.watch("all_gather_in_place of 1024 bfloat16 on rank 1 (cuda)", seconds(2),
                        [] { return false; });
  manual.now += milliseconds(1999);
  EXPECT_FALSE(manual.watchdog.check());
  manual.now += milliseconds(1);
  EXPECT_TRUE(manual.watchdog.check());
  ASSERT_EQ(manual.aborts.size(), 1u);
  const std::string& message = manual.aborts[0];
  for (const char* part :
       {"NCCL collective all_gather_in_place of 1024 bfloat16", "rank 1/4 on host-a",
        "still running after 2 s", "aborts the communicator and the job"}) {
    EXPECT_NE(message.find(part), std::string::npos) << part << " not in: " << message;
  }
  // Once: later rounds (an abort that returned) do nothing.
  manual.now += seconds(10);
  EXPECT_FALSE(manual.watchdog.check());
  EXPECT_EQ(manual.aborts.size(), 1u);
  EXPECT_TRUE(manual.watchdog.aborted());
}

TEST(CollectiveWatchdog, EachCollectiveHasItsOwnDeadlineFromWhenItWasWatched) {
  ManualWatchdog manual;
  manual.watchdog.watch("first", seconds(2), [] { return true; });
  manual.now += seconds(1);
  manual.watchdog.watch("second", seconds(2), [] { return false; });
  manual.now += milliseconds(1500);  // 2.5 s after the first, 1.5 s after the second
  EXPECT_FALSE(manual.watchdog.check());
  manual.watchdog.watch("third", seconds(60), [] { return false; });
  manual.now += milliseconds(500);
  EXPECT_TRUE(manual.watchdog.check());
  ASSERT_EQ(manual.aborts.size(), 1u);
  EXPECT_NE(manual.aborts[0].find("collective second on"), std::string::npos) << manual.aborts[0];
}

TEST(CollectiveWatchdog, AbortsWhenAProbeReportsAFailure) {
  ManualWatchdog manual;
  manual.watchdog.watch("broadcast of 4 int64 from rank 0", seconds(600), [] {
    throw std::runtime_error("cudaEventQuery failed: cudaErrorLaunchFailure");
    return false;
  });
  EXPECT_TRUE(manual.watchdog.check());
  ASSERT_EQ(manual.aborts.size(), 1u);
  EXPECT_NE(manual.aborts[0].find("broadcast of 4 int64 from rank 0 on rank 1/4 on host-a: "
                                  "failed: cudaEventQuery failed: cudaErrorLaunchFailure"),
            std::string::npos)
      << manual.aborts[0];
}

TEST(CollectiveWatchdog, AbortsWhenTheCommunicatorFails) {
  ManualWatchdog manual;
  manual.watchdog.watch("all_reduce of 1 float32", seconds(600), [] { return false; });
  EXPECT_FALSE(manual.watchdog.check());
  manual.group_check = [] {
    throw std::runtime_error("remote process exited or there was a network error");
  };
  EXPECT_TRUE(manual.watchdog.check());
  ASSERT_EQ(manual.aborts.size(), 1u);
  for (const char* part : {"NCCL communicator on rank 1/4 on host-a failed: remote process exited",
                           "oldest outstanding: all_reduce of 1 float32"}) {
    EXPECT_NE(manual.aborts[0].find(part), std::string::npos)
        << part << " not in: " << manual.aborts[0];
  }
}

TEST(CollectiveWatchdog, ItsThreadAbortsAHungCollectiveAndStopsWhenDestroyed) {
  std::atomic<int> aborts{0};
  std::string message;
  std::mutex message_mutex;
  const auto start = std::chrono::steady_clock::now();
  {
    CollectiveWatchdog watchdog(
        "rank 0/2 on host-b", "NCCL",
        [&](const std::string& text) {
          std::lock_guard<std::mutex> lock(message_mutex);
          message = text;
          ++aborts;
        },
        nullptr, CollectiveWatchdog::Options{milliseconds(5)});
    watchdog.watch("barrier", milliseconds(50), [] { return false; });
    while (aborts.load() == 0 && std::chrono::steady_clock::now() - start < seconds(30)) {
      std::this_thread::sleep_for(milliseconds(5));
    }
    std::this_thread::sleep_for(milliseconds(30));  // further rounds must not abort again
  }
  EXPECT_EQ(aborts.load(), 1);
  std::lock_guard<std::mutex> lock(message_mutex);
  EXPECT_NE(message.find("collective barrier on rank 0/2 on host-b"), std::string::npos) << message;
  EXPECT_GE(std::chrono::steady_clock::now() - start, milliseconds(50));
}

}  // namespace
}  // namespace fsdp
