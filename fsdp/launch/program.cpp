#include "fsdp/launch/program.h"

#include <mpi.h>

#include <chrono>
#include <cmath>
#include <exception>
#include <iostream>
#include <sstream>
#include <string>
#include <thread>

#include "fsdp/collective_errors.h"

namespace po = boost::program_options;

namespace fsdp::launch {
namespace {

po::options_description common_options() {
  po::options_description options("Common options");
  options.add_options()("help,h", "show this help and exit")(
      "backend", po::value<std::string>()->default_value("auto"),
      "collectives: auto (NCCL when every rank has a GPU of its own, else MPI), mpi, nccl")(
      "collective-timeout", po::value<double>()->default_value(600.0),
      "seconds a rank waits for its peers in one collective before the job is aborted "
      "(a hung or crashed peer, or collectives issued in a different order); it bounds the "
      "MPI bootstrap and the preflight agreement too");
  return options;
}

// MPI_Allreduce(MIN) of one int over the world, given up after `timeout`: a
// peer stuck before its preflight agreement (a hung file system, a stopped
// process) must end the job with a message, not hang it. Not a process group
// collective: the groups do not exist yet.
void agree_within(int* value, std::chrono::milliseconds timeout, Runtime& runtime,
                  const std::string& what) {
  MPI_Request request = MPI_REQUEST_NULL;
  MPI_Iallreduce(MPI_IN_PLACE, value, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD, &request);
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  int done = 0;
  while (true) {
    MPI_Test(&request, &done, MPI_STATUS_IGNORE);
    if (done) return;
    if (std::chrono::steady_clock::now() > deadline) {
      runtime.abort_job(what + ": the ranks did not all arrive within " +
                        std::to_string(timeout.count() / 1000.0) +
                        " s (--collective-timeout): a peer rank is stuck or has died before it");
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
}

// --collective-timeout, read before MPI is initialized: it bounds the
// bootstrap too. A missing or invalid value gives the default here; the full
// parse reports an invalid one.
std::chrono::milliseconds bootstrap_timeout(int argc, char** argv) {
  try {
    po::variables_map values;
    po::store(
        po::command_line_parser(argc, argv).options(common_options()).allow_unregistered().run(),
        values);
    po::notify(values);
    return runtime_options_from(values).collective_timeout;
  } catch (const std::exception&) {
    return kDefaultCollectiveTimeout;
  }
}

}  // namespace

RuntimeOptions runtime_options_from(const po::variables_map& values) {
  RuntimeOptions options;
  const std::string& backend = values["backend"].as<std::string>();
  if (backend == "auto") {
    options.backend = BackendChoice::kAuto;
  } else if (backend == "mpi") {
    options.backend = BackendChoice::kMpi;
  } else if (backend == "nccl") {
    options.backend = BackendChoice::kNccl;
  } else {
    throw po::invalid_option_value("--backend " + backend + " (expected auto, mpi or nccl)");
  }
  // Bounded: a millisecond count must stay positive and far from overflowing
  // the clock arithmetic (1e19 s printed as a negative timeout, 1e-9 became 0).
  constexpr double kMaxSeconds = 1e6;  // 11.6 days
  const double seconds = values["collective-timeout"].as<double>();
  if (!(seconds >= 0.001 && seconds <= kMaxSeconds)) {
    std::ostringstream shown;
    shown << seconds;
    throw po::invalid_option_value("--collective-timeout " + shown.str() +
                                   " (expected a number of seconds from 0.001 to 1000000)");
  }
  options.collective_timeout = std::chrono::milliseconds(static_cast<long long>(seconds * 1000));
  return options;
}

int run_program(int argc, char** argv, const ProgramInfo& info,
                po::options_description program_options, const ProgramBody& body) {
  Runtime runtime(&argc, &argv, bootstrap_timeout(argc, argv));
  po::options_description all(info.name + " options");
  all.add(program_options).add(common_options());

  po::variables_map values;
  RuntimeOptions runtime_options;
  try {
    const auto parsed = po::command_line_parser(argc, argv).options(all).run();
    // A stray word ("--steps 5 oops") must not be ignored: the user meant something by it.
    for (const auto& option : parsed.options) {
      if (option.position_key >= 0) {
        throw po::error("unexpected argument '" + option.value.front().substr(0, 80) + "' (" +
                        info.name + " takes only options)");
      }
    }
    po::store(parsed, values);
    po::notify(values);
    if (values.count("help")) {
      if (runtime.rank() == 0) {
        std::cout << info.name << ": " << info.summary << "\n\nUsage: " << info.usage << "\n\n"
                  << all << info.epilog << std::flush;
      }
      return 0;
    }
    runtime_options = runtime_options_from(values);
  } catch (const po::error& error) {
    if (runtime.rank() == 0) {
      std::cerr << info.name << ": " << error.what() << "\nTry '" << info.name
                << " --help' for the options." << std::endl;
    }
    return 2;
  }
  if (info.preflight) {
    std::string failure;
    try {
      info.preflight(values, runtime.world_size());
    } catch (const std::exception& error) {
      failure = error.what();
    }
    // The ranks agree before anyone goes on: a path that exists on rank 0's
    // node but not on another's must not leave rank 0 waiting in a collective
    // for peers that already returned. The lowest failing rank speaks.
    int first_failing = failure.empty() ? runtime.world_size() : runtime.rank();
    agree_within(&first_failing, runtime_options.collective_timeout, runtime,
                 info.name + ": preflight");
    if (first_failing < runtime.world_size()) {
      if (runtime.rank() == first_failing) {
        std::cerr << info.name << ": "
                  << (first_failing == 0 ? "" : "rank " + std::to_string(first_failing) + ": ")
                  << failure << std::endl;
      }
      return 2;
    }
  }

  try {
    runtime.connect(runtime_options);
    return body(runtime, values);
  } catch (const Error& error) {
    // Agreed: every rank is here with the same message, no need to abort anyone.
    if (error.failing_rank() >= 0) {
      if (runtime.rank() == 0) std::cerr << info.name << ": " << error.what() << std::endl;
      return 1;
    }
    runtime.abort_job(info.name + ": " + error.what());
  } catch (const std::exception& error) {
    runtime.abort_job(info.name + ": " + error.what());
  } catch (...) {
    runtime.abort_job(info.name + ": an unknown exception escaped");
  }
}

}  // namespace fsdp::launch
