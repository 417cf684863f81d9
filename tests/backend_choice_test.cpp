// The backend decision (fsdp/launch/backend_choice.h) on made-up device
// tables: what "a GPU of its own" means under the usual launch layouts, and
// when auto may pick NCCL.
#include <gtest/gtest.h>

#include "fsdp/errors.h"
#include "fsdp/launch/backend_choice.h"

namespace fsdp::launch {
namespace {

// The chosen devices' UUIDs of a node whose ranks see `views` (each rank's
// visible GPUs' UUIDs, in its own device order).
std::vector<bool> owners(const std::vector<std::vector<std::string>>& views) {
  std::vector<std::string> chosen;
  for (std::size_t local = 0; local < views.size(); ++local) {
    const int device =
        chosen_device(static_cast<int>(local), static_cast<int>(views[local].size()));
    chosen.push_back(device < 0 ? "" : views[local][static_cast<std::size_t>(device)]);
  }
  return owns_chosen_device(chosen);
}

TEST(BackendChoice, AGpuOfItsOwnComparesUuidsNotCounts) {
  const std::vector<std::string> eight = {"g0", "g1", "g2", "g3", "g4", "g5", "g6", "g7"};
  // mpirun -np 8 on an 8-GPU node: every rank sees all eight and takes its own.
  EXPECT_EQ(owners(std::vector<std::vector<std::string>>(8, eight)), std::vector<bool>(8, true));
  // SLURM --gpus-per-task=1 / per-rank CUDA_VISIBLE_DEVICES: each sees one,
  // as device 0, and they are different GPUs (the old count test said no).
  EXPECT_EQ(owners({{"g0"}, {"g1"}, {"g2"}, {"g3"}}), std::vector<bool>(4, true));
  // Two ranks, one GPU both see: neither owns it.
  EXPECT_EQ(owners({{"g0"}, {"g0"}}), (std::vector<bool>{false, false}));
  // Four ranks on two GPUs: ranks 0 and 2 share g0, 1 and 3 share g1.
  EXPECT_EQ(owners({{"g0", "g1"}, {"g0", "g1"}, {"g0", "g1"}, {"g0", "g1"}}),
            std::vector<bool>(4, false));
  // A rank that sees no GPU owns none; the others are unaffected.
  EXPECT_EQ(owners({{"g0"}, {}}), (std::vector<bool>{true, false}));
  EXPECT_EQ(chosen_device(5, 0), -1);
  EXPECT_EQ(chosen_device(5, 4), 1);
}

TEST(BackendChoice, AutoIsNcclOnlyWhenEverythingAllowsIt) {
  const BackendFacts ready{true, true, true};
  EXPECT_EQ(resolve_backend(BackendChoice::kAuto, ready), Backend::kNccl);
  EXPECT_EQ(resolve_backend(BackendChoice::kNccl, ready), Backend::kNccl);
  EXPECT_EQ(resolve_backend(BackendChoice::kMpi, ready), Backend::kMpi);
  // Debian's CPU-only libtorch on a GPU machine: auto must stay on MPI (the
  // whole CPU suite failed when it picked NCCL there).
  const BackendFacts cpu_torch{false, true, true};
  EXPECT_EQ(resolve_backend(BackendChoice::kAuto, cpu_torch), Backend::kMpi);
  EXPECT_EQ(resolve_backend(BackendChoice::kAuto, BackendFacts{true, false, true}), Backend::kMpi);
  EXPECT_EQ(resolve_backend(BackendChoice::kAuto, BackendFacts{true, true, false}), Backend::kMpi);
}

TEST(BackendChoice, AskedForNcclItSaysEveryReasonItCannot) {
  try {
    resolve_backend(BackendChoice::kNccl, BackendFacts{false, false, false});
    FAIL() << "accepted";
  } catch (const ConfigurationError& error) {
    const std::string message = error.what();
    EXPECT_NE(message.find("backend nccl cannot be used"), std::string::npos) << message;
    EXPECT_NE(message.find("no NCCL"), std::string::npos) << message;
    EXPECT_NE(message.find("libtorch it runs with has no CUDA"), std::string::npos) << message;
    EXPECT_NE(message.find("no GPU of its own"), std::string::npos) << message;
    EXPECT_NE(message.find("--backend mpi"), std::string::npos) << message;
  }
}

}  // namespace
}  // namespace fsdp::launch
