// A command line shard-inspect cannot act on: a bad option value, slice or
// regex. The program prints it and exits with status 2 (checkpoint problems
// are checkpoint::CheckpointError, status 3).
#pragma once

#include <stdexcept>

namespace fsdp::inspect {

class UsageError : public std::invalid_argument {
 public:
  using std::invalid_argument::invalid_argument;
};

}  // namespace fsdp::inspect
