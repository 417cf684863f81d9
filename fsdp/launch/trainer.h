// fsdp-train's job: build the reference model sharded over the ranks, fill
// its shards (deterministic initialisation, an HF checkpoint, or a checkpoint
// to resume), train on synthetic data or token files (fsdp/launch/training_data.h),
// evaluate (fsdp/launch/evaluation.h), save checkpoints, and report: one progress
// line per interval, a summary at the end, optional HF export and inspection
// of parameters.
//
// Every rank runs it; only rank 0 prints. Collective throughout: every failure
// after the preflight is agreed by all ranks (an fsdp::Error with its
// failing_rank(), fsdp/errors.h) or ends the job.
#pragma once

#include <ostream>

#include "fsdp/launch/runtime.h"
#include "fsdp/launch/train_options.h"

namespace fsdp::launch {

// Checks, on every rank and before any collective, what can be checked from
// the options and the file system alone: --resume finds a checkpoint whose
// model matches, --init-from-hf exists, every --inspect name is a parameter
// of the model, every token of --data and --eval-data is inside the model's
// vocabulary and --eval-data holds a whole window, and --checkpoint-dir and
// --export-hf can be written without deleting anything the runtime did not write. Throws
// std::runtime_error with the reason.
void preflight_training(const TrainOptions& options);

// Runs the whole training job. Returns the process exit status (0).
int run_training(Runtime& runtime, const TrainOptions& options, std::ostream& out);

}  // namespace fsdp::launch
