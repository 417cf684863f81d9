// Background progress for non-blocking MPI collectives.
//
// Note [MPI progress]
// Open MPI's non-blocking collectives (libnbc) advance only while some thread
// of the rank is inside an MPI call: a schedule's next round starts when the
// rank polls. A rank that starts an all-gather and then computes (prefetch)
// would leave it idle, and its peers waiting, until it polled again, so the
// overlap would be on paper only. While a collective is in flight and no
// thread is waiting on it, this engine's thread enters MPI every
// kPollInterval (MPI_Iprobe on a private communicator, which drives the
// progress engine and never matches anything), so the collective advances
// during the computation. It never touches the requests themselves: those
// belong to their CollectiveWork (MPI forbids two threads completing one
// request). It sleeps on a condition variable when nothing is unattended, so
// blocking collectives and idle ranks cost nothing, and it needs
// MPI_THREAD_MULTIPLE.
//
// It is opt-in (FSDP_MPI_PROGRESS_THREAD=1): it pays only when the host has a
// core to spare for it. Measured on a 2-core VM with 2 ranks (every core
// computing), polling every 50 us made training steps 27% slower and every
// 1 ms still 3% slower (docs/PERFORMANCE.md). Without it, the schedule drives
// a prefetch by polling its work between layers (Fsdp::progress()), which
// costs nothing and is enough for the few rounds of a shared-memory all-gather.
#pragma once

#include <mpi.h>

#include <chrono>
#include <condition_variable>
#include <mutex>
#include <thread>

namespace fsdp {

class MpiProgressEngine {
 public:
  static constexpr std::chrono::microseconds kPollInterval{200};

  // REQUIRES: MPI is initialised. Collective over `communicator` (duplicates it).
  explicit MpiProgressEngine(MPI_Comm communicator);
  // Stops and joins the thread, frees the communicator (if MPI is still up).
  ~MpiProgressEngine();
  MpiProgressEngine(const MpiProgressEngine&) = delete;
  MpiProgressEngine& operator=(const MpiProgressEngine&) = delete;

  bool running() const { return thread_.joinable(); }
  // A collective started and nobody is waiting on it yet / any more.
  void add_unattended();
  void remove_unattended();

 private:
  void run();

  MPI_Comm communicator_ = MPI_COMM_NULL;
  std::mutex mutex_;
  std::condition_variable wake_;
  int unattended_ = 0;
  bool stopping_ = false;
  std::thread thread_;
};

}  // namespace fsdp
