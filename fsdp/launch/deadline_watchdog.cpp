#include "fsdp/launch/deadline_watchdog.h"

#include <mpi.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <utility>

namespace fsdp::launch {

DeadlineWatchdog::DeadlineWatchdog(std::string what, std::chrono::milliseconds timeout)
    : what_(std::move(what)), timeout_(timeout), thread_([this] { watch(); }) {}

DeadlineWatchdog::~DeadlineWatchdog() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    done_ = true;
  }
  finished_.notify_one();
  thread_.join();
}

void DeadlineWatchdog::watch() {
  std::unique_lock<std::mutex> lock(mutex_);
  if (finished_.wait_for(lock, timeout_, [this] { return done_; })) return;
  // The rank is not known yet (MPI may not be initialized); the process id
  // and host tell the launcher's output apart.
  char host[256] = {};
  gethostname(host, sizeof host - 1);
  std::fprintf(stderr,
               "[fsdp pid %d on %s] fatal: %s did not finish within %.1f s "
               "(--collective-timeout): a peer rank was stopped, crashed at launch or is "
               "stuck before it\n",
               static_cast<int>(getpid()), host, what_.c_str(), timeout_.count() / 1000.0);
  std::fflush(stderr);
  // MPI_Initialized may be called from any thread at any time; MPI_Abort
  // then needs the MPI_THREAD_MULTIPLE level the Runtime asks for.
  int initialized = 0;
  MPI_Initialized(&initialized);
  if (initialized) MPI_Abort(MPI_COMM_WORLD, 1);
  std::_Exit(1);
}

}  // namespace fsdp::launch
