// main() for multi-rank GoogleTest programs, run as `mpirun -np N test`.
//
// Every rank runs every test. Rank 0 prints GoogleTest's usual output; the
// other ranks print only their failures, prefixed with their rank. At the end
// the failure counts are summed over ranks, so a failure on any rank fails the
// job on every rank. A rank stuck in a collective because a peer failed an
// assertion and moved on is freed by the collective timeout
// (--collective-timeout, set short by ctest). --backend mpi|auto|nccl: the
// collectives (MPI by default).
#include <gtest/gtest.h>

#include <cstring>
#include <iostream>

#include "mpi_test_environment.h"

namespace fsdp::testing {
namespace {

launch::Runtime* the_runtime = nullptr;

class RankFailurePrinter : public ::testing::EmptyTestEventListener {
 public:
  explicit RankFailurePrinter(int rank) : rank_(rank) {}
  // The test's name is taken here: inside OnTestPartResult GoogleTest holds its
  // own lock, and asking it for the current test there deadlocks.
  void OnTestStart(const ::testing::TestInfo& test) override {
    test_name_ = std::string(test.test_suite_name()) + "." + test.name();
  }
  void OnTestPartResult(const ::testing::TestPartResult& result) override {
    if (!result.failed()) return;
    std::cerr << "[rank " << rank_ << "] " << (result.file_name() ? result.file_name() : "?") << ":"
              << result.line_number() << ": failure in " << test_name_ << "\n"
              << result.message() << std::endl;
  }

 private:
  int rank_;
  std::string test_name_;
};

}  // namespace

launch::Runtime& runtime() { return *the_runtime; }

}  // namespace fsdp::testing

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  fsdp::launch::Runtime runtime(&argc, &argv);
  fsdp::testing::the_runtime = &runtime;

  // The backend is explicit: MPI unless a test asks for another (GPU tests
  // ask for auto), so that the CPU suite runs on MPI on a GPU machine too.
  fsdp::launch::RuntimeOptions options;
  options.backend = fsdp::launch::BackendChoice::kMpi;
  for (int i = 1; i + 1 < argc; ++i) {
    if (std::strcmp(argv[i], "--collective-timeout") == 0) {
      options.collective_timeout =
          std::chrono::milliseconds(static_cast<long long>(std::atof(argv[i + 1]) * 1000));
    } else if (std::strcmp(argv[i], "--backend") == 0) {
      const std::string backend = argv[i + 1];
      options.backend = backend == "auto"   ? fsdp::launch::BackendChoice::kAuto
                        : backend == "nccl" ? fsdp::launch::BackendChoice::kNccl
                                            : fsdp::launch::BackendChoice::kMpi;
    }
  }
  try {
    runtime.connect(options);
  } catch (const std::exception& error) {
    runtime.abort_job(std::string("test set-up failed: ") + error.what());
  }

  ::testing::TestEventListeners& listeners = ::testing::UnitTest::GetInstance()->listeners();
  if (runtime.rank() != 0) {
    delete listeners.Release(listeners.default_result_printer());
    listeners.Append(new fsdp::testing::RankFailurePrinter(runtime.rank()));
  }
  const int local_result = RUN_ALL_TESTS();

  int local_failed = local_result != 0 ? 1 : 0;
  int failed_ranks = 0;
  MPI_Allreduce(&local_failed, &failed_ranks, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
  if (runtime.rank() == 0) {
    std::cout << "[ mpi      ] " << runtime.world_size() << " rank(s), " << failed_ranks
              << " with failures" << std::endl;
  }
  return failed_ranks == 0 ? 0 : 1;
}
