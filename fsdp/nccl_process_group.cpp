#include "fsdp/nccl_process_group.h"

#include <cuda_runtime_api.h>
#include <nccl.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <thread>
#include <vector>

#include "fsdp/collective_watchdog.h"
#include "fsdp/communication_checks.h"
#include "fsdp/kernels/cast.h"
#include "fsdp/mpi_process_group.h"

namespace fsdp {
namespace {

void check_cuda(cudaError_t status, const char* call, const char* file, int line) {
  if (status == cudaSuccess) return;
  detail::throw_communication_error(
      call, std::string(cudaGetErrorName(status)) + ": " + cudaGetErrorString(status), file, line);
}

void check_nccl(ncclResult_t result, ncclComm_t communicator, const char* call, const char* file,
                int line) {
  if (result == ncclSuccess || result == ncclInProgress) return;
  std::string reason = ncclGetErrorString(result);
  const char* last = ncclGetLastError(communicator);
  if (last != nullptr && last[0] != '\0') reason += " (" + std::string(last) + ")";
  detail::throw_communication_error(call, reason + " [" + NcclProcessGroup::nccl_version() + "]",
                                    file, line);
}

#define FSDP_CUDA_CHECK(call) check_cuda((call), #call, __FILE__, __LINE__)
#define FSDP_NCCL_CHECK(call) check_nccl((call), communicator_, #call, __FILE__, __LINE__)

ncclDataType_t nccl_type(ElementType type) {
  switch (type) {
    case ElementType::kFloat32:
      return ncclFloat32;
    case ElementType::kFloat64:
      return ncclFloat64;
    case ElementType::kBFloat16:
      return ncclBfloat16;
    case ElementType::kFloat16:
      return ncclFloat16;
    case ElementType::kInt8:
      return ncclInt8;
    case ElementType::kUInt8:
      return ncclUint8;
    case ElementType::kInt32:
      return ncclInt32;
    case ElementType::kInt64:
      return ncclInt64;
  }
  throw std::invalid_argument("nccl process group: unknown element type");
}

ncclRedOp_t nccl_op(ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum:
      return ncclSum;
    case ReduceOp::kAverage:
      return ncclAvg;
    case ReduceOp::kMin:
      return ncclMin;
    case ReduceOp::kMax:
      return ncclMax;
  }
  throw std::invalid_argument("nccl process group: unknown reduce op");
}

// Polls a non-blocking communicator until it leaves ncclInProgress or
// `deadline` passes; returns its last state (ncclInProgress: timed out).
ncclResult_t wait_for_communicator(ncclComm_t communicator,
                                   std::chrono::steady_clock::time_point deadline) {
  while (true) {
    ncclResult_t state = ncclInProgress;
    check_nccl(ncclCommGetAsyncError(communicator, &state), communicator, "ncclCommGetAsyncError",
               __FILE__, __LINE__);
    if (state != ncclInProgress || std::chrono::steady_clock::now() > deadline) return state;
    std::this_thread::yield();
  }
}

// True once `event` has completed; throws CommunicationError when the device failed.
bool event_completed(cudaEvent_t event) {
  const cudaError_t status = cudaEventQuery(event);
  if (status == cudaErrorNotReady) return false;
  check_cuda(status, "cudaEventQuery", __FILE__, __LINE__);
  return true;
}

// A CUDA event, shared by the work handle and the watchdog's probe (whichever
// lets go last destroys it).
using SharedEvent = std::shared_ptr<CUevent_st>;

SharedEvent record_event(cudaStream_t stream) {
  cudaEvent_t event = nullptr;
  check_cuda(cudaEventCreateWithFlags(&event, cudaEventDisableTiming), "cudaEventCreateWithFlags",
             __FILE__, __LINE__);
  SharedEvent shared(event, [](cudaEvent_t e) { cudaEventDestroy(e); });
  check_cuda(cudaEventRecord(event, stream), "cudaEventRecord", __FILE__, __LINE__);
  return shared;
}

class NcclWork final : public CollectiveWork {
 public:
  NcclWork(NcclProcessGroup& group, std::string description, SharedEvent done, bool host_blocking)
      : CollectiveWork(std::move(description)),
        group_(group),
        done_(std::move(done)),
        host_blocking_(host_blocking) {}

  // process_group.h: a work destroyed unwaited is waited for. Here that is
  // cheap (the compute stream is ordered after the collective, Note [Comm
  // stream ordering]) and keeps memory freed afterwards on the compute stream
  // from being reused while NCCL still writes it.
  ~NcclWork() override {
    if (waited_) return;
    try {
      wait();
    } catch (const std::exception& error) {
      group_.abort_job(std::string("while destroying an unwaited ") + description() + ": " +
                       error.what());
    }
  }

  void wait() override {
    if (waited_) return;
    if (host_blocking_) {
      group_.synchronize();
    } else {
      // The compute stream now, not the one at enqueue: a caller may have
      // switched streams in between.
      check_cuda(cudaStreamWaitEvent(group_.compute_stream(), done_.get(), 0),
                 "cudaStreamWaitEvent", __FILE__, __LINE__);
    }
    waited_ = true;
  }

  bool is_completed() override {
    if (!event_completed(done_.get())) return false;
    wait();
    return true;
  }

 private:
  NcclProcessGroup& group_;
  SharedEvent done_;
  bool host_blocking_;
  bool waited_ = false;
};

}  // namespace

std::string NcclProcessGroup::nccl_version() {
  int version = 0;
  ncclGetVersion(&version);
  // NCCL >= 2.9 encodes major*10000 + minor*100 + patch.
  return "NCCL " + std::to_string(version / 10000) + "." + std::to_string(version / 100 % 100) +
         "." + std::to_string(version % 100);
}

std::unique_ptr<NcclProcessGroup> NcclProcessGroup::create(MpiProcessGroup& bootstrap,
                                                           int cuda_device) {
  // cudaSetDevice creates the context here, under --backend nccl only.
  check_cuda(cudaSetDevice(cuda_device), "cudaSetDevice", __FILE__, __LINE__);
  ncclUniqueId id{};
  if (bootstrap.rank() == 0) {
    check_nccl(ncclGetUniqueId(&id), nullptr, "ncclGetUniqueId", __FILE__, __LINE__);
  }
  std::vector<std::uint8_t> id_bytes(sizeof(id));
  std::memcpy(id_bytes.data(), &id, sizeof(id));
  bootstrap.broadcast(host_span(id_bytes), 0);
  std::memcpy(&id, id_bytes.data(), sizeof(id));
  // Non-blocking, so that a peer that never joins (its GPU hung, its network
  // down) ends in a timeout with a message rather than a hang: every NCCL call
  // on this communicator may then return ncclInProgress, and is followed by
  // wait_while_in_progress().
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 0;
  ncclComm_t communicator = nullptr;
  check_nccl(ncclCommInitRankConfig(&communicator, bootstrap.size(), id, bootstrap.rank(), &config),
             communicator, "ncclCommInitRankConfig", __FILE__, __LINE__);
  const ncclResult_t state =
      wait_for_communicator(communicator, std::chrono::steady_clock::now() + bootstrap.timeout());
  if (state != ncclSuccess) ncclCommAbort(communicator);
  if (state == ncclInProgress) {
    throw CollectiveTimeoutError("joining the NCCL communicator on " +
                                 bootstrap.rank_description() + " (GPU " +
                                 std::to_string(cuda_device) + ") did not complete within " +
                                 format_seconds(bootstrap.timeout()) +
                                 ": a peer rank has probably failed or cannot reach this one");
  }
  check_nccl(state, nullptr, "ncclCommInitRankConfig", __FILE__, __LINE__);
  char host[256] = "unknown-host";
  gethostname(host, sizeof(host) - 1);
  return std::unique_ptr<NcclProcessGroup>(new NcclProcessGroup(
      bootstrap.rank(), bootstrap.size(), host, bootstrap.timeout(), cuda_device, communicator));
}

NcclProcessGroup::NcclProcessGroup(int rank, int size, std::string host,
                                   std::chrono::milliseconds timeout, int cuda_device,
                                   ncclComm* communicator)
    : ProcessGroup(rank, size, std::move(host), timeout),
      cuda_device_(cuda_device),
      communicator_(communicator) {
  // High priority, as c10d's: a collective's kernels are scheduled ahead of
  // compute kernels queued earlier, so the prefetch it is for arrives in time.
  int least_priority = 0, greatest_priority = 0;
  FSDP_CUDA_CHECK(cudaDeviceGetStreamPriorityRange(&least_priority, &greatest_priority));
  FSDP_CUDA_CHECK(cudaStreamCreateWithPriority(&communication_stream_, cudaStreamNonBlocking,
                                               greatest_priority));
  FSDP_CUDA_CHECK(cudaEventCreateWithFlags(&compute_ready_, cudaEventDisableTiming));
  FSDP_CUDA_CHECK(cudaMalloc(&barrier_scratch_, sizeof(float)));
  watchdog_ = std::make_unique<CollectiveWatchdog>(
      rank_description(), "NCCL", [this](const std::string& message) { abort_job(message); },
      [this] { check_async_error("the communicator"); });
}

NcclProcessGroup::~NcclProcessGroup() {
  // Before the communicator goes: the watchdog polls it.
  watchdog_.reset();
  if (!aborted_ && communicator_ != nullptr) ncclCommDestroy(communicator_);
  if (barrier_scratch_ != nullptr) cudaFree(barrier_scratch_);
  if (compute_ready_ != nullptr) cudaEventDestroy(compute_ready_);
  if (communication_stream_ != nullptr) cudaStreamDestroy(communication_stream_);
}

void NcclProcessGroup::abort_job(std::string_view message) {
  std::fprintf(stderr, "[fsdp %s] fatal: %.*s\n", rank_description().c_str(),
               static_cast<int>(message.size()), message.data());
  std::fflush(stderr);
  if (!aborted_ && communicator_ != nullptr) {
    aborted_ = true;
    ncclCommAbort(communicator_);
  }
  MPI_Abort(MPI_COMM_WORLD, 1);
  std::_Exit(1);
}

void NcclProcessGroup::order_after_compute() {
  FSDP_CUDA_CHECK(cudaEventRecord(compute_ready_, compute_stream()));
  FSDP_CUDA_CHECK(cudaStreamWaitEvent(communication_stream_, compute_ready_, 0));
}

ProcessGroup::Work NcclProcessGroup::finish_enqueue(std::string description, bool host_blocking) {
  SharedEvent done = record_event(communication_stream_);
  watchdog_->watch(description, timeout(), [done] { return event_completed(done.get()); });
  return std::make_unique<NcclWork>(*this, std::move(description), std::move(done), host_blocking);
}

void NcclProcessGroup::wait_while_in_progress(const char* call) {
  const ncclResult_t state =
      wait_for_communicator(communicator_, std::chrono::steady_clock::now() + timeout());
  if (state == ncclInProgress) {
    throw CollectiveTimeoutError(std::string(call) + " on " + rank_description() +
                                 " was still being enqueued after " + format_seconds(timeout()));
  }
  check_nccl(state, communicator_, call, __FILE__, __LINE__);
}

void NcclProcessGroup::set_staging_allocator(DeviceAllocator allocator) {
  staging_allocator_ = std::move(allocator);
}

// In stream order on the communication stream: no host synchronisation, and
// reused only once the collective that uses it is done.
NcclProcessGroup::StagingPointer NcclProcessGroup::allocate_staging(std::int64_t count) {
  const auto bytes = static_cast<std::int64_t>(sizeof(float)) * std::max<std::int64_t>(count, 1);
  void* pointer = nullptr;
  if (staging_allocator_.allocate) {
    pointer = staging_allocator_.allocate(static_cast<std::size_t>(bytes), communication_stream_);
  } else {
    FSDP_CUDA_CHECK(
        cudaMallocAsync(&pointer, static_cast<std::size_t>(bytes), communication_stream_));
  }
  return StagingPointer(static_cast<float*>(pointer), [this](float* staged) {
    if (staging_allocator_.free) {
      staging_allocator_.free(staged, communication_stream_);
    } else {
      cudaFreeAsync(staged, communication_stream_);  // a deleter must not throw
    }
  });
}

void NcclProcessGroup::check_async_error(const std::string& context) {
  ncclResult_t state = ncclSuccess;
  FSDP_NCCL_CHECK(ncclCommGetAsyncError(communicator_, &state));
  if (state != ncclSuccess && state != ncclInProgress) {
    check_nccl(state, communicator_, context.c_str(), __FILE__, __LINE__);
  }
}

void NcclProcessGroup::synchronize() {
  const auto deadline = std::chrono::steady_clock::now() + timeout();
  while (true) {
    const cudaError_t status = cudaStreamQuery(communication_stream_);
    if (status == cudaSuccess) return;
    if (status != cudaErrorNotReady) {
      FSDP_CUDA_CHECK(status);
    }
    check_async_error("a collective on " + rank_description());
    if (std::chrono::steady_clock::now() > deadline) {
      throw CollectiveTimeoutError(
          "NCCL collectives on " + rank_description() + " did not complete within " +
          format_seconds(timeout()) +
          ": a peer rank has probably failed, stopped early, or issued its collectives in a "
          "different order");
    }
    std::this_thread::yield();
  }
}

ProcessGroup::Work NcclProcessGroup::start_all_gather_in_place(TensorSpan buffer,
                                                               std::string description) {
  const std::size_t count = static_cast<std::size_t>(buffer.numel / size());
  const TensorSpan own = buffer.slice(static_cast<std::int64_t>(count) * rank(), count);
  order_after_compute();
  FSDP_NCCL_CHECK(ncclAllGather(own.data, buffer.data, count, nccl_type(buffer.type), communicator_,
                                communication_stream_));
  wait_while_in_progress("ncclAllGather");
  return finish_enqueue(std::move(description), false);
}

std::int64_t NcclProcessGroup::reduce_scatter_scratch_bytes(std::int64_t input_numel,
                                                            ElementType input,
                                                            ElementType output) const {
  if (!is_half_precision(input)) return 0;
  const std::int64_t float32 = element_size(ElementType::kFloat32);
  const std::int64_t output_numel = input_numel / size();
  return input_numel * float32 + (output == ElementType::kFloat32 ? 0 : output_numel * float32);
}

ProcessGroup::Work NcclProcessGroup::start_reduce_scatter(TensorSpan input, TensorSpan output,
                                                          ReduceOp op, std::string description) {
  const std::size_t count = static_cast<std::size_t>(output.numel);
  order_after_compute();
  if (!is_half_precision(input.type)) {
    FSDP_NCCL_CHECK(ncclReduceScatter(input.data, output.data, count, nccl_type(input.type),
                                      nccl_op(op), communicator_, communication_stream_));
    wait_while_in_progress("ncclReduceScatter");
    return finish_enqueue(std::move(description), false);
  }
  // 16-bit floats are reduced in float32 (Note in process_group.h).
  StagingPointer input32 = allocate_staging(input.numel);
  kernels::cast_on_device(input.data, input.type, input32.get(), ElementType::kFloat32, input.numel,
                          communication_stream_);
  StagingPointer output32_staging;
  float* output32 = static_cast<float*>(output.data);
  if (output.type != ElementType::kFloat32) {
    output32_staging = allocate_staging(output.numel);
    output32 = output32_staging.get();
  }
  FSDP_NCCL_CHECK(ncclReduceScatter(input32.get(), output32, count, ncclFloat32, nccl_op(op),
                                    communicator_, communication_stream_));
  wait_while_in_progress("ncclReduceScatter");
  if (output32_staging) {
    kernels::cast_on_device(output32, ElementType::kFloat32, output.data, output.type, output.numel,
                            communication_stream_);
  }
  return finish_enqueue(std::move(description), false);
}

ProcessGroup::Work NcclProcessGroup::start_all_reduce(TensorSpan buffer, ReduceOp op,
                                                      std::string description) {
  const std::size_t count = static_cast<std::size_t>(buffer.numel);
  order_after_compute();
  if (!is_half_precision(buffer.type)) {
    FSDP_NCCL_CHECK(ncclAllReduce(buffer.data, buffer.data, count, nccl_type(buffer.type),
                                  nccl_op(op), communicator_, communication_stream_));
    wait_while_in_progress("ncclAllReduce");
    return finish_enqueue(std::move(description), false);
  }
  StagingPointer values32 = allocate_staging(buffer.numel);
  kernels::cast_on_device(buffer.data, buffer.type, values32.get(), ElementType::kFloat32,
                          buffer.numel, communication_stream_);
  FSDP_NCCL_CHECK(ncclAllReduce(values32.get(), values32.get(), count, ncclFloat32, nccl_op(op),
                                communicator_, communication_stream_));
  wait_while_in_progress("ncclAllReduce");
  kernels::cast_on_device(values32.get(), ElementType::kFloat32, buffer.data, buffer.type,
                          buffer.numel, communication_stream_);
  return finish_enqueue(std::move(description), false);
}

ProcessGroup::Work NcclProcessGroup::start_broadcast(TensorSpan buffer, int root,
                                                     std::string description) {
  order_after_compute();
  FSDP_NCCL_CHECK(ncclBroadcast(buffer.data, buffer.data, static_cast<std::size_t>(buffer.numel),
                                nccl_type(buffer.type), root, communicator_,
                                communication_stream_));
  wait_while_in_progress("ncclBroadcast");
  return finish_enqueue(std::move(description), false);
}

ProcessGroup::Work NcclProcessGroup::start_barrier(std::string description) {
  // NCCL has no barrier: an all-reduce of one float, waited for on the host.
  FSDP_NCCL_CHECK(ncclAllReduce(barrier_scratch_, barrier_scratch_, 1, ncclFloat32, ncclSum,
                                communicator_, communication_stream_));
  wait_while_in_progress("ncclAllReduce (barrier)");
  return finish_enqueue(std::move(description), true);
}

}  // namespace fsdp
