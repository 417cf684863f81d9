// The one error type of the checkpoint module: bad files and bad input.
//
// Every message names the file (and the tensor key, when there is one), what
// was expected and what was found, so that a user can act on it without a
// debugger. The module throws rather than returning a status because its
// callers sit under collectives and the launcher: an exception reaches
// run_program(), which prints it once and ends the job, and
// collective_errors.h carries it, as a CheckpointError, across ranks.
#pragma once

#include "fsdp/errors.h"

namespace fsdp::checkpoint {

using CheckpointError = fsdp::CheckpointError;

}  // namespace fsdp::checkpoint
