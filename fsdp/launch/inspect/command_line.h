// shard-inspect's command line: options, dispatch to the views, output, and
// exit statuses. main() (fsdp/launch/shard_inspect_main.cpp) only calls this, so
// tests run exactly what the program runs.
#pragma once

#include <iosfwd>
#include <string>
#include <vector>

namespace fsdp::inspect {

inline constexpr int kExitOk = 0;
inline constexpr int kExitDifferences = 1;  // --diff found differences beyond --tol
inline constexpr int kExitUsage = 2;        // bad option, value, slice or regex
inline constexpr int kExitBadInput = 3;     // unreadable, corrupt or unexpected input

// Runs shard-inspect with `arguments` (argv without the program name).
// Results go to `out`, errors to `err` (one line, starting "shard-inspect: ").
// Never throws; returns the exit status.
int run_shard_inspect(const std::vector<std::string>& arguments, std::ostream& out,
                      std::ostream& err);

}  // namespace fsdp::inspect
