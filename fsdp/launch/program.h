// The main() of every fsdp program: options, runtime, and failure handling.
//
//   int main(int argc, char** argv) {
//     boost::program_options::options_description options("fsdp-train options");
//     options.add_options()("steps", po::value<int>()->default_value(100), "...");
//     return fsdp::launch::run_program(argc, argv, {"fsdp-train", "one-line summary"}, options,
//                                      [](Runtime& runtime, const po::variables_map& values)
//                                      {...});
//   }
//
// What it guarantees:
//   * The common options (--backend, --collective-timeout, --help) are added.
//   * --help and option errors are printed once (by rank 0); every rank exits
//     with 0 (help) or 2 (bad option) -- all ranks parse the same command line,
//     so all stop together without waiting on each other.
//   * `info.preflight` failures are reported like bad options (once, status 2).
//   * An error agreed across ranks escaping `body` (fsdp::Error with a
//     failing_rank(), fsdp/collective_errors.h: every rank throws it
//     together, with the failing rank's message) is printed once, by rank 0,
//     and every rank exits with status 1.
//   * Any other exception escaping `body` on any rank prints that rank's message
//     (with rank and host) and aborts the whole job with exit status 1: never a hang.
#pragma once

#include <boost/program_options.hpp>

#include <functional>
#include <string>

#include "fsdp/launch/runtime.h"

namespace fsdp::launch {

struct ProgramInfo {
  std::string name;     // "fsdp-train"
  std::string summary;  // one line for --help
  std::string usage;    // e.g. "mpirun -np N fsdp-train [options]"
  // Checks that need the world size or the file system (a checkpoint to
  // resume from, a batch the ranks must split), run on every rank before any
  // collective. Throwing boost::program_options::error (or CheckpointError,
  // or any std::exception) stops the job like a bad option: printed once (by
  // the lowest failing rank, after the ranks agree), exit status 2 on every rank.
  std::function<void(const boost::program_options::variables_map& values, int world_size)>
      preflight;
  // Printed after the options in --help: examples, notes.
  std::string epilog;
};

using ProgramBody =
    std::function<int(Runtime& runtime, const boost::program_options::variables_map& values)>;

int run_program(int argc, char** argv, const ProgramInfo& info,
                boost::program_options::options_description program_options,
                const ProgramBody& body);

// Parses the common options into RuntimeOptions.
// Throws boost::program_options::error for a bad backend name or timeout.
RuntimeOptions runtime_options_from(const boost::program_options::variables_map& values);

}  // namespace fsdp::launch
