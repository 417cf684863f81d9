#include "fsdp/collective_watchdog.h"

#include <exception>
#include <utility>

#include "fsdp/process_group.h"

namespace fsdp {

CollectiveWatchdog::CollectiveWatchdog(std::string rank_description, std::string backend,
                                       Abort abort, GroupCheck group_check, Options options)
    : rank_description_(std::move(rank_description)),
      backend_(std::move(backend)),
      abort_(std::move(abort)),
      group_check_(std::move(group_check)),
      options_(std::move(options)) {
  if (options_.start_thread) thread_ = std::thread([this] { run(); });
}

CollectiveWatchdog::~CollectiveWatchdog() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
  }
  wake_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void CollectiveWatchdog::watch(std::string description, std::chrono::milliseconds timeout,
                               Probe probe) {
  std::lock_guard<std::mutex> lock(mutex_);
  watched_.push_back({std::move(description), options_.clock(), timeout, std::move(probe)});
}

std::size_t CollectiveWatchdog::outstanding() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return watched_.size();
}

bool CollectiveWatchdog::aborted() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return aborted_;
}

std::string CollectiveWatchdog::message_for(const Watched& watched,
                                            const std::string& reason) const {
  return backend_ + " collective " + watched.description + " on " + rank_description_ + ": " +
         reason + ". The watchdog aborts the communicator and the job.";
}

bool CollectiveWatchdog::check() {
  std::lock_guard<std::mutex> one_check(check_mutex_);
  std::string message;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (aborted_) return false;
    const auto now = options_.clock();
    try {
      if (group_check_) group_check_();
    } catch (const std::exception& error) {
      message = backend_ + " communicator on " + rank_description_ + " failed: " + error.what() +
                (watched_.empty() ? std::string()
                                  : " (oldest outstanding: " + watched_.front().description + ")") +
                ". The watchdog aborts the communicator and the job.";
    }
    // Collectives on one stream complete in order, but each is probed: a
    // probe is cheap, and a failure is reported for the collective it names.
    for (auto it = watched_.begin(); message.empty() && it != watched_.end();) {
      bool completed = false;
      try {
        completed = it->probe();
      } catch (const std::exception& error) {
        message = message_for(*it, std::string("failed: ") + error.what());
        break;
      }
      if (completed) {
        it = watched_.erase(it);
      } else if (now - it->started >= it->timeout) {
        message = message_for(
            *it, "still running after " + format_seconds(it->timeout) +
                     " (the group's timeout): a peer rank has probably failed, stopped early, "
                     "or issued its collectives in a different order");
      } else {
        ++it;
      }
    }
    if (message.empty()) return false;
    aborted_ = true;
  }
  abort_(message);
  return true;
}

void CollectiveWatchdog::run() {
  std::unique_lock<std::mutex> lock(mutex_);
  while (!stopping_) {
    wake_.wait_for(lock, options_.poll_interval, [this] { return stopping_; });
    if (stopping_) break;
    lock.unlock();
    check();
    lock.lock();
  }
}

}  // namespace fsdp
