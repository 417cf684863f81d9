// Access to the runtime from multi-rank tests (started by mpi_test_main.cpp).
#pragma once

#include "fsdp/launch/runtime.h"

namespace fsdp::testing {

// The process's runtime, connected before any test runs.
launch::Runtime& runtime();

}  // namespace fsdp::testing
