// Turning one rank's failure into every rank's failure, with its message and
// its kind.
//
// Work that is local but fallible (reading files, checking layouts) sits
// between collectives: if rank 2 throws while the others go on into the next
// collective, they wait there until the deadline and then fail with a
// timeout that says nothing about the cause. run_agreeing_on_failure() is the
// checkpoint where every rank says whether it failed: when any did, every
// rank throws the same error -- the same fsdp::Error kind (fsdp/errors.h),
// carrying the lowest failing rank's message and number -- so that a harness
// catches a CheckpointError as such on every rank, and whichever rank the
// launcher hears from first prints the real cause.
#pragma once

#include <functional>

#include "fsdp/errors.h"
#include "fsdp/process_group.h"

namespace fsdp {

// Runs `work` on this rank, then agrees with the group (collective: one
// all-reduce, plus two broadcasts on failure). Returns normally only when
// every rank's `work` returned. Otherwise throws, on every rank, the error
// kind of the lowest failing rank (RankFailedError for exceptions that are
// not fsdp::Error) with what() "rank R: <its message>" and failing_rank() R.
//
// `work` must not issue collectives: a rank that throws halfway through
// leaves the others waiting in a collective it never joins, and the job ends
// in a timeout instead of this agreement. Fallible work between collectives
// catches its failure, keeps taking part in the collectives, and rethrows
// inside a later run_agreeing_on_failure (fsdp/checkpoint/hf_export.cpp does).
//
// Tensors for the collectives are placed where the group wants them (host
// for MPI, the current CUDA device for NCCL).
void run_agreeing_on_failure(ProcessGroup& group, const std::function<void()>& work);

}  // namespace fsdp
