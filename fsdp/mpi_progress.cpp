#include "fsdp/mpi_progress.h"

#include <cstdlib>
#include <string>

#include "fsdp/communication_checks.h"

namespace fsdp {

MpiProgressEngine::MpiProgressEngine(MPI_Comm communicator) {
  int level = MPI_THREAD_SINGLE;
  FSDP_MPI_CHECK(MPI_Query_thread(&level));
  if (level < MPI_THREAD_MULTIPLE) return;  // Note [MPI progress]: polling only
  const char* enabled = std::getenv("FSDP_MPI_PROGRESS_THREAD");
  if (enabled == nullptr || std::string(enabled) != "1") return;
  FSDP_MPI_CHECK(MPI_Comm_dup(communicator, &communicator_));
  FSDP_MPI_CHECK(MPI_Comm_set_errhandler(communicator_, MPI_ERRORS_RETURN));
  thread_ = std::thread([this] { run(); });
}

MpiProgressEngine::~MpiProgressEngine() {
  if (!thread_.joinable()) return;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
  }
  wake_.notify_one();
  thread_.join();
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized) MPI_Comm_free(&communicator_);
}

void MpiProgressEngine::add_unattended() {
  if (!thread_.joinable()) return;
  bool first = false;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    first = unattended_++ == 0;
  }
  if (first) wake_.notify_one();
}

void MpiProgressEngine::remove_unattended() {
  if (!thread_.joinable()) return;
  std::lock_guard<std::mutex> lock(mutex_);
  --unattended_;
}

void MpiProgressEngine::run() {
  std::unique_lock<std::mutex> lock(mutex_);
  while (true) {
    wake_.wait(lock, [&] { return stopping_ || unattended_ > 0; });
    if (stopping_) return;
    lock.unlock();
    // Errors cannot be reported from here; the work's own wait() sees them.
    int flag = 0;
    MPI_Iprobe(MPI_ANY_SOURCE, MPI_ANY_TAG, communicator_, &flag, MPI_STATUS_IGNORE);
    std::this_thread::sleep_for(kPollInterval);
    lock.lock();
  }
}

}  // namespace fsdp
