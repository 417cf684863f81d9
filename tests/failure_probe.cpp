// A program that fails on purpose, to test that one rank's failure ends the
// whole job with its message instead of hanging the others.
//   --throw-on-rank R     rank R throws while the others wait in a collective
//   --skip-on-rank R      rank R skips a collective and stays alive; the others
//                         must give up after --collective-timeout and abort the job
//   --stall-preflight-on-rank R
//                         rank R's preflight takes 60 s; the others must give up
//                         after --collective-timeout and abort the job
//   --stall-launch-on-rank R
//                         rank R (OMPI_COMM_WORLD_RANK) sleeps 60 s before MPI_Init,
//                         as a process stopped at launch; the others must give up
//                         after --collective-timeout and end the job
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <stdexcept>
#include <string>
#include <thread>

#include <mpi.h>

#include "fsdp/launch/program.h"

namespace po = boost::program_options;

int main(int argc, char** argv) {
  // Before run_program, so before MPI exists: the launcher's variable says the rank.
  const char* launched_rank = std::getenv("OMPI_COMM_WORLD_RANK");
  for (int i = 1; i + 1 < argc; ++i) {
    if (std::strcmp(argv[i], "--stall-launch-on-rank") == 0 && launched_rank != nullptr &&
        std::string(launched_rank) == argv[i + 1]) {
      std::this_thread::sleep_for(std::chrono::seconds(60));
    }
  }
  po::options_description options("Failure probe");
  options.add_options()("throw-on-rank", po::value<int>()->default_value(-1), "rank that throws")(
      "skip-on-rank", po::value<int>()->default_value(-1), "rank that skips a collective")(
      "stall-preflight-on-rank", po::value<int>()->default_value(-1), "rank whose preflight hangs")(
      "stall-launch-on-rank", po::value<int>()->default_value(-1), "rank that starts late");
  fsdp::launch::ProgramInfo info{"failure-probe", "fails on purpose",
                                 "mpirun -np N failure-probe [options]", nullptr, ""};
  info.preflight = [](const po::variables_map& values, int) {
    int rank = 0;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    if (rank == values["stall-preflight-on-rank"].as<int>()) {
      std::this_thread::sleep_for(std::chrono::seconds(60));  // a hung file system, say
    }
  };
  return fsdp::launch::run_program(
      argc, argv, info, options,
      [](fsdp::launch::Runtime& runtime, const po::variables_map& values) {
        std::vector<std::int32_t> value = {1};
        auto& group = *runtime.host_group();
        if (runtime.rank() == values["throw-on-rank"].as<int>()) {
          // Let the peers get into the collective first.
          std::this_thread::sleep_for(std::chrono::milliseconds(300));
          throw std::runtime_error("checkpoint shard 'model-00002.safetensors' is truncated");
        }
        if (runtime.rank() == values["skip-on-rank"].as<int>()) {
          // Alive but not participating, as a rank stuck elsewhere would be.
          std::this_thread::sleep_for(std::chrono::seconds(60));
          return 0;
        }
        group.all_reduce(fsdp::host_span(value), fsdp::ReduceOp::kSum);
        std::cout << "rank " << runtime.rank() << " finished" << std::endl;
        return 0;
      });
}
