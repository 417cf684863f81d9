// Turning one rank's failure into every rank's failure, with its message.
//
// Work that is local but fallible (reading files, checking layouts) sits
// between collectives: if rank 2 throws while the others go on into the next
// collective, they wait there until the deadline and then fail with a
// timeout that says nothing about the cause. agree_on_failure() is the
// checkpoint where every rank says whether it failed: when any did, every
// rank throws the same error, carrying the lowest failing rank's message, so
// that whichever rank the launcher hears from first prints the real cause.
#pragma once

#include <exception>
#include <functional>
#include <stdexcept>

#include "fsdp/process_group.h"

namespace fsdp {

// The error every rank throws when some rank failed: what() is
// "rank R: <that rank's message>".
class RankFailedError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Runs `work` on this rank, then agrees with the group (collective: one
// all-reduce, plus one broadcast of a message on failure). Returns normally
// only when every rank's `work` returned. Tensors for the collectives are
// placed where the group wants them (host for MPI, the current CUDA device
// for NCCL).
void run_agreeing_on_failure(ProcessGroup& group, const std::function<void()>& work);

}  // namespace fsdp
