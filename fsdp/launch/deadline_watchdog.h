// A deadline for the blocking MPI calls that have no timeout of their own:
// MPI_Init's exchange with the launcher and the peers, the communicator
// splits and the first collectives of the bootstrap. A peer that was stopped
// or hung at launch would otherwise keep every other rank waiting forever.
//
//   {
//     DeadlineWatchdog watchdog("MPI bootstrap", timeout);
//     MPI_Init_thread(...);  // ...and anything else that may wait on a peer
//   }                        // disarmed: finished in time
//
// When the deadline passes first, the watchdog's thread prints one line
// naming the step and the timeout and ends the job: MPI_Abort once MPI is
// initialized (the launcher then ends every rank), before that _Exit(1) (a
// rank that exits non-zero makes mpirun end the others).
#pragma once

#include <chrono>
#include <condition_variable>
#include <mutex>
#include <string>
#include <thread>

namespace fsdp::launch {

class DeadlineWatchdog {
 public:
  // Starts watching `what` (for the message: "MPI bootstrap") for `timeout`.
  DeadlineWatchdog(std::string what, std::chrono::milliseconds timeout);
  // Disarms and joins the thread: the step finished in time.
  ~DeadlineWatchdog();
  DeadlineWatchdog(const DeadlineWatchdog&) = delete;
  DeadlineWatchdog& operator=(const DeadlineWatchdog&) = delete;

 private:
  void watch();

  std::string what_;
  std::chrono::milliseconds timeout_;
  std::mutex mutex_;
  std::condition_variable finished_;
  bool done_ = false;
  std::thread thread_;  // last: starts once the members it reads exist
};

}  // namespace fsdp::launch
