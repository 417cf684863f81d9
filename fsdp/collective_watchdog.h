// A thread that ends the job when a device collective fails or outlives its
// deadline.
//
// Note [Collective watchdog]
// Device collectives do not block the host: NcclWork::wait() only orders the
// compute stream after the collective (Note [Comm stream ordering]). When a
// peer hangs, this rank hangs later in whatever host call next waits on the
// device (`.item()`, `.cpu()`, a synchronize), which has no deadline of its
// own. So, as PyTorch's ProcessGroupNCCL does, a watchdog thread polls every
// outstanding collective's completion (a CUDA event) and the communicator's
// asynchronous error, and calls the group's abort (which aborts the
// communicator, so no rank stays stuck in a kernel, then the job) with a
// message naming the collective, the rank and the host, once one fails or
// is still running at its deadline.
//
// Free of CUDA and NCCL: a collective is watched through a probe, so the
// deadline logic is tested on any machine with fake probes and a fake clock.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace fsdp {

class CollectiveWatchdog {
 public:
  using Clock = std::function<std::chrono::steady_clock::time_point()>;
  // True once the collective has completed, false while it runs; throws (any
  // std::exception, whose what() says what failed) when it failed. Called on
  // the watchdog's thread: it must be thread-safe (cudaEventQuery is).
  using Probe = std::function<bool()>;
  // Throws when the communicator as a whole has failed (ncclCommGetAsyncError).
  using GroupCheck = std::function<void()>;
  // Ends the job with the message. Called at most once, on the watchdog's
  // thread (or check()'s caller); the watchdog stops watching afterwards, for
  // an abort that returns (tests).
  using Abort = std::function<void(const std::string& message)>;

  struct Options {
    std::chrono::milliseconds poll_interval{100};
    Clock clock = [] { return std::chrono::steady_clock::now(); };
    // False: no thread; only check() polls (tests drive it by hand).
    bool start_thread = true;
  };

  // `rank_description` ("rank 1/4 on host-a") and `backend` ("NCCL") go into messages.
  CollectiveWatchdog(std::string rank_description, std::string backend, Abort abort,
                     GroupCheck group_check, Options options);
  CollectiveWatchdog(std::string rank_description, std::string backend, Abort abort,
                     GroupCheck group_check)
      : CollectiveWatchdog(std::move(rank_description), std::move(backend), std::move(abort),
                           std::move(group_check), Options{}) {}
  // Stops and joins the thread. Collectives still outstanding are not waited for.
  ~CollectiveWatchdog();

  CollectiveWatchdog(const CollectiveWatchdog&) = delete;
  CollectiveWatchdog& operator=(const CollectiveWatchdog&) = delete;

  // Watches `description` ("all_gather_in_place of 1024 bfloat16 on rank 1
  // (cuda)") from now until its probe reports completion, for at most `timeout`.
  // Thread-safe.
  void watch(std::string description, std::chrono::milliseconds timeout, Probe probe);

  // One round: forgets completed collectives, and aborts (returning true) on
  // the first that failed or is past its deadline, or when the group check
  // throws. Thread-safe; the thread calls it every poll interval.
  bool check();

  // Collectives not yet seen complete.
  std::size_t outstanding() const;
  bool aborted() const;

 private:
  struct Watched {
    std::string description;
    std::chrono::steady_clock::time_point started;
    std::chrono::milliseconds timeout;
    Probe probe;
  };

  void run();
  // The abort's message for `watched`, given why it ends the job.
  std::string message_for(const Watched& watched, const std::string& reason) const;

  const std::string rank_description_;
  const std::string backend_;
  const Abort abort_;
  const GroupCheck group_check_;
  const Options options_;

  mutable std::mutex mutex_;
  std::condition_variable wake_;
  std::vector<Watched> watched_;  // guarded by mutex_
  bool stopping_ = false;         // guarded by mutex_
  bool aborted_ = false;          // guarded by mutex_
  std::mutex check_mutex_;        // one check() at a time (the probes need not be reentrant)
  std::thread thread_;
};

}  // namespace fsdp
