// Stopping a run cleanly on a signal, as a cluster asks before it kills a job
// (SLURM sends SIGTERM, or the signal of --signal=USR1@120, some time before
// SIGKILL). The handler only records the signal; the training loop polls
// received() once per step, the ranks agree on it through a collective the
// step runs anyway, and the run saves a checkpoint and exits 0 so that a
// requeued job resumes. A second signal during the save changes nothing.
#pragma once

#include <csignal>
#include <string>
#include <vector>

namespace fsdp::launch {

// "TERM,USR1" -> {SIGTERM, SIGUSR1}; names with or without "SIG", any case
// of TERM, INT, HUP, USR1, USR2, XCPU. Throws std::invalid_argument naming an
// unknown one; an empty string gives no signals.
std::vector<int> parse_stop_signals(const std::string& names);
// "SIGUSR1".
std::string signal_name(int signal);

// Installs the handler for `signals` while it lives and restores the previous
// dispositions after. REQUIRES: at most one at a time in a process.
class StopSignals {
 public:
  explicit StopSignals(std::vector<int> signals);
  ~StopSignals();
  StopSignals(const StopSignals&) = delete;
  StopSignals& operator=(const StopSignals&) = delete;

  // The first signal that arrived, or 0.
  int received() const;

 private:
  std::vector<int> signals_;
  std::vector<struct sigaction> previous_;
};

}  // namespace fsdp::launch
