#include "fsdp/launch/runtime.h"

#include <ATen/Context.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "fsdp/communication_checks.h"
#include "fsdp/launch/cuda_devices.h"
#include "fsdp/launch/deadline_watchdog.h"

#if FSDP_WITH_NCCL
#include "fsdp/nccl_process_group.h"
#if FSDP_TORCH_HAS_CUDA
#include "fsdp/launch/torch_cuda_hooks.h"
#endif
#else
#define FSDP_WITH_NCCL 0
#endif

namespace fsdp::launch {

Runtime::Runtime(int* argc, char*** argv, std::chrono::milliseconds bootstrap_timeout) {
  // MPI_Init waits for the launcher and every peer; the topology below is
  // collective. Neither has a timeout of its own.
  DeadlineWatchdog watchdog("MPI bootstrap (MPI_Init and the topology exchange)",
                            bootstrap_timeout);
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

namespace {

// Every local rank's string, in local-rank order (MPI_Allgather on the node's
// ranks, in fixed-size slots).
std::vector<std::string> gather_on_node(MPI_Comm world, int rank, const std::string& mine) {
  constexpr int kSlot = 64;
  MPI_Comm node = MPI_COMM_NULL;
  FSDP_MPI_CHECK(MPI_Comm_split_type(world, MPI_COMM_TYPE_SHARED, rank, MPI_INFO_NULL, &node));
  int size = 0;
  FSDP_MPI_CHECK(MPI_Comm_size(node, &size));
  std::string slot = mine.substr(0, kSlot - 1);
  slot.resize(kSlot, '\0');
  std::vector<char> all(static_cast<std::size_t>(kSlot) * static_cast<std::size_t>(size));
  FSDP_MPI_CHECK(MPI_Allgather(slot.data(), kSlot, MPI_CHAR, all.data(), kSlot, MPI_CHAR, node));
  FSDP_MPI_CHECK(MPI_Comm_free(&node));
  std::vector<std::string> strings;
  for (int r = 0; r < size; ++r) strings.emplace_back(all.data() + r * kSlot);
  return strings;
}

}  // namespace

void Runtime::connect(const RuntimeOptions& options) {
  if (host_group_) throw std::logic_error("Runtime::connect called twice");
  host_group_ = std::make_shared<MpiProcessGroup>(MPI_COMM_WORLD, options.collective_timeout);
  // --backend mpi touches no CUDA at all: no device query, no context.
  if (options.backend == BackendChoice::kMpi) return;

  // Every rank learns the facts (a driver too old throws here, on that rank).
  // The device exchange is collective and has no timeout of its own.
  DeadlineWatchdog watchdog("Runtime::connect (the device exchange, NCCL setup)",
                            options.collective_timeout);
  const int device_count = cuda_device_count();
  const int device = chosen_device(local_rank_, device_count);
  const std::string uuid = device >= 0 ? cuda_device_uuid(device) : std::string();
  const auto owners = owns_chosen_device(gather_on_node(MPI_COMM_WORLD, rank_, uuid));
  int owns = owners.at(static_cast<std::size_t>(local_rank_)) ? 1 : 0;
  int everyone_owns = 0;
  FSDP_MPI_CHECK(
      MPI_Allreduce(&owns, &everyone_owns, 1, MPI_INT, MPI_MIN, host_group_->communicator()));
  BackendFacts facts;
  facts.torch_has_cuda = at::hasCUDA();
  facts.built_with_nccl = FSDP_WITH_NCCL != 0;
  facts.every_rank_owns_a_gpu = everyone_owns != 0;
  if (resolve_backend(options.backend, facts) != Backend::kNccl) return;
#if FSDP_WITH_NCCL
  cuda_device_ = device;
  bind_cuda_device(cuda_device_);
  std::shared_ptr<NcclProcessGroup> nccl = NcclProcessGroup::create(*host_group_, cuda_device_);
#if FSDP_TORCH_HAS_CUDA
  use_torch_cuda_runtime(*nccl);
#endif
  device_group_ = std::move(nccl);
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
