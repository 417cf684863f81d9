#include "fsdp/launch/runtime.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <stdexcept>
#include <thread>

#include "fsdp/communication_checks.h"
#include "fsdp/launch/cuda_devices.h"

#if FSDP_WITH_NCCL
#include "fsdp/nccl_process_group.h"
#endif

namespace fsdp::launch {

Runtime::Runtime(int* argc, char*** argv) {
  int provided = 0;
  FSDP_MPI_CHECK(MPI_Init_thread(argc, argv, MPI_THREAD_MULTIPLE, &provided));
  FSDP_MPI_CHECK(MPI_Comm_rank(MPI_COMM_WORLD, &rank_));
  FSDP_MPI_CHECK(MPI_Comm_size(MPI_COMM_WORLD, &world_size_));

  MPI_Comm node = MPI_COMM_NULL;
  FSDP_MPI_CHECK(
      MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, rank_, MPI_INFO_NULL, &node));
  FSDP_MPI_CHECK(MPI_Comm_rank(node, &local_rank_));
  FSDP_MPI_CHECK(MPI_Comm_size(node, &local_world_size_));
  FSDP_MPI_CHECK(MPI_Comm_free(&node));
  // One "leader" per node counts the hosts.
  int leader = local_rank_ == 0 ? 1 : 0;
  FSDP_MPI_CHECK(MPI_Allreduce(&leader, &host_count_, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD));

  char name[MPI_MAX_PROCESSOR_NAME] = {};
  int length = 0;
  FSDP_MPI_CHECK(MPI_Get_processor_name(name, &length));
  host_name_.assign(name, length);
}

Runtime::~Runtime() {
  device_group_.reset();
  host_group_.reset();
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized) MPI_Finalize();
}

void Runtime::connect(const RuntimeOptions& options) {
  if (host_group_) throw std::logic_error("Runtime::connect called twice");
  host_group_ = std::make_shared<MpiProcessGroup>(MPI_COMM_WORLD, options.collective_timeout);

  const int device_count = cuda_device_count();
  if (device_count > 0) {
    cuda_device_ = local_rank_ % device_count;
    bind_cuda_device(cuda_device_);
  }
  // NCCL needs a GPU of its own for every rank ("Duplicate GPU detected" otherwise).
  int own_gpu = device_count >= local_world_size_ ? 1 : 0;
  int everyone_has_gpu = 0;
  FSDP_MPI_CHECK(
      MPI_Allreduce(&own_gpu, &everyone_has_gpu, 1, MPI_INT, MPI_MIN, host_group_->communicator()));

  const bool want_nccl = options.backend == BackendChoice::kNccl ||
                         (options.backend == BackendChoice::kAuto && everyone_has_gpu);
  if (!want_nccl) return;
#if FSDP_WITH_NCCL
  if (!everyone_has_gpu) {
    throw std::runtime_error("backend nccl needs a GPU of its own for every rank, but rank " +
                             std::to_string(rank_) + " on " + host_name_ + " sees " +
                             std::to_string(device_count) + " GPU(s) for " +
                             std::to_string(local_world_size_) +
                             " rank(s) on its host (or another rank lacks one); "
                             "use --backend mpi, or start one rank per GPU");
  }
  device_group_ = NcclProcessGroup::create(*host_group_, cuda_device_);
#else
  throw std::runtime_error(
      "backend nccl was requested, but this build of fsdp-runtime has no NCCL (no CUDA toolkit "
      "was found at configure time); use --backend mpi");
#endif
}

std::shared_ptr<ProcessGroup> Runtime::process_group() const {
  if (device_group_) return device_group_;
  return host_group();
}

std::shared_ptr<MpiProcessGroup> Runtime::host_group() const {
  if (!host_group_) throw std::logic_error("Runtime: call connect() before using process groups");
  return host_group_;
}

void Runtime::abort_job(std::string_view message) const {
  if (device_group_) device_group_->abort_job(message);
  if (host_group_) host_group_->abort_job(message);
  std::fprintf(stderr, "[fsdp rank %d/%d on %s] fatal: %.*s\n", rank_, world_size_,
               host_name_.c_str(), static_cast<int>(message.size()), message.data());
  std::fflush(stderr);
  MPI_Abort(MPI_COMM_WORLD, 1);
  std::_Exit(1);
}

std::string Runtime::describe() const {
  std::string text = std::to_string(world_size_) + (world_size_ == 1 ? " rank" : " ranks") +
                     " on " + std::to_string(host_count_) + (host_count_ == 1 ? " host" : " hosts");
  if (host_group_) text += ", backend " + std::string(process_group()->backend_name());
  text += ", rank " + std::to_string(rank_) + " local " + std::to_string(local_rank_) + "/" +
          std::to_string(local_world_size_) + " on " + host_name_;
  text += cuda_device_ >= 0 ? ", GPU " + std::to_string(cuda_device_) : ", no GPU";
  return text;
}

int Runtime::compute_threads() const {
  if (const char* configured = std::getenv("OMP_NUM_THREADS")) {
    const int threads = std::atoi(configured);
    if (threads > 0) return threads;
  }
  const int cores = static_cast<int>(std::thread::hardware_concurrency());
  return std::max(1, cores / std::max(1, local_world_size_));
}

}  // namespace fsdp::launch
