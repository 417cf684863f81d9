#include "fsdp/nccl_process_group.h"

#include <cuda_runtime_api.h>
#include <nccl.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <thread>
#include <vector>

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

class NcclWork final : public CollectiveWork {
 public:
  NcclWork(NcclProcessGroup& group, std::string description, cudaEvent_t done,
           cudaStream_t compute_stream, bool host_blocking)
      : CollectiveWork(std::move(description)),
        group_(group),
        done_(done),
        compute_stream_(compute_stream),
        host_blocking_(host_blocking) {}

  ~NcclWork() override { cudaEventDestroy(done_); }

  void wait() override {
    if (waited_) return;
    if (host_blocking_) {
      group_.synchronize();
    } else {
      check_cuda(cudaStreamWaitEvent(compute_stream_, done_, 0), "cudaStreamWaitEvent", __FILE__,
                 __LINE__);
    }
    waited_ = true;
  }

  bool is_completed() override {
    const cudaError_t status = cudaEventQuery(done_);
    if (status == cudaErrorNotReady) return false;
    check_cuda(status, "cudaEventQuery", __FILE__, __LINE__);
    wait();
    return true;
  }

 private:
  NcclProcessGroup& group_;
  cudaEvent_t done_;
  cudaStream_t compute_stream_;
  bool host_blocking_;
  bool waited_ = false;
};

// A float32 staging buffer in stream order: allocated and freed on the
// communication stream, so no host synchronisation is needed.
float* allocate_staging(std::int64_t count, cudaStream_t stream) {
  void* pointer = nullptr;
  check_cuda(cudaMallocAsync(&pointer, (count > 0 ? count : 1) * sizeof(float), stream),
             "cudaMallocAsync", __FILE__, __LINE__);
  return static_cast<float*>(pointer);
}

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
  check_cuda(cudaSetDevice(cuda_device), "cudaSetDevice", __FILE__, __LINE__);
  ncclUniqueId id{};
  if (bootstrap.rank() == 0) {
    check_nccl(ncclGetUniqueId(&id), nullptr, "ncclGetUniqueId", __FILE__, __LINE__);
  }
  std::vector<std::uint8_t> id_bytes(sizeof(id));
  std::memcpy(id_bytes.data(), &id, sizeof(id));
  bootstrap.broadcast(host_span(id_bytes), 0);
  std::memcpy(&id, id_bytes.data(), sizeof(id));
  // All ranks reached this point (the broadcast above has a deadline), so the
  // blocking init below only waits for peers that are already joining.
  ncclComm_t communicator = nullptr;
  check_nccl(ncclCommInitRank(&communicator, bootstrap.size(), id, bootstrap.rank()), nullptr,
             "ncclCommInitRank", __FILE__, __LINE__);
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
  FSDP_CUDA_CHECK(cudaStreamCreateWithFlags(&communication_stream_, cudaStreamNonBlocking));
  FSDP_CUDA_CHECK(cudaEventCreateWithFlags(&compute_ready_, cudaEventDisableTiming));
  FSDP_CUDA_CHECK(cudaMalloc(&barrier_scratch_, sizeof(float)));
}

NcclProcessGroup::~NcclProcessGroup() {
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
  FSDP_CUDA_CHECK(cudaEventRecord(compute_ready_, compute_stream_));
  FSDP_CUDA_CHECK(cudaStreamWaitEvent(communication_stream_, compute_ready_, 0));
}

ProcessGroup::Work NcclProcessGroup::finish_enqueue(std::string description, bool host_blocking) {
  cudaEvent_t done = nullptr;
  FSDP_CUDA_CHECK(cudaEventCreateWithFlags(&done, cudaEventDisableTiming));
  FSDP_CUDA_CHECK(cudaEventRecord(done, communication_stream_));
  return std::make_unique<NcclWork>(*this, std::move(description), done, compute_stream_,
                                    host_blocking);
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
  return finish_enqueue(std::move(description), false);
}

ProcessGroup::Work NcclProcessGroup::start_reduce_scatter(TensorSpan input, TensorSpan output,
                                                          ReduceOp op, std::string description) {
  const std::size_t count = static_cast<std::size_t>(output.numel);
  order_after_compute();
  if (!is_half_precision(input.type)) {
    FSDP_NCCL_CHECK(ncclReduceScatter(input.data, output.data, count, nccl_type(input.type),
                                      nccl_op(op), communicator_, communication_stream_));
    return finish_enqueue(std::move(description), false);
  }
  // 16-bit floats are reduced in float32 (Note in process_group.h).
  float* input32 = allocate_staging(input.numel, communication_stream_);
  kernels::cast_on_device(input.data, input.type, input32, ElementType::kFloat32, input.numel,
                          communication_stream_);
  float* output32 = output.type == ElementType::kFloat32
                        ? static_cast<float*>(output.data)
                        : allocate_staging(output.numel, communication_stream_);
  FSDP_NCCL_CHECK(ncclReduceScatter(input32, output32, count, ncclFloat32, nccl_op(op),
                                    communicator_, communication_stream_));
  if (output32 != output.data) {
    kernels::cast_on_device(output32, ElementType::kFloat32, output.data, output.type, output.numel,
                            communication_stream_);
    FSDP_CUDA_CHECK(cudaFreeAsync(output32, communication_stream_));
  }
  FSDP_CUDA_CHECK(cudaFreeAsync(input32, communication_stream_));
  return finish_enqueue(std::move(description), false);
}

ProcessGroup::Work NcclProcessGroup::start_all_reduce(TensorSpan buffer, ReduceOp op,
                                                      std::string description) {
  const std::size_t count = static_cast<std::size_t>(buffer.numel);
  order_after_compute();
  if (!is_half_precision(buffer.type)) {
    FSDP_NCCL_CHECK(ncclAllReduce(buffer.data, buffer.data, count, nccl_type(buffer.type),
                                  nccl_op(op), communicator_, communication_stream_));
    return finish_enqueue(std::move(description), false);
  }
  float* values32 = allocate_staging(buffer.numel, communication_stream_);
  kernels::cast_on_device(buffer.data, buffer.type, values32, ElementType::kFloat32, buffer.numel,
                          communication_stream_);
  FSDP_NCCL_CHECK(ncclAllReduce(values32, values32, count, ncclFloat32, nccl_op(op), communicator_,
                                communication_stream_));
  kernels::cast_on_device(values32, ElementType::kFloat32, buffer.data, buffer.type, buffer.numel,
                          communication_stream_);
  FSDP_CUDA_CHECK(cudaFreeAsync(values32, communication_stream_));
  return finish_enqueue(std::move(description), false);
}

ProcessGroup::Work NcclProcessGroup::start_broadcast(TensorSpan buffer, int root,
                                                     std::string description) {
  order_after_compute();
  FSDP_NCCL_CHECK(ncclBroadcast(buffer.data, buffer.data, static_cast<std::size_t>(buffer.numel),
                                nccl_type(buffer.type), root, communicator_,
                                communication_stream_));
  return finish_enqueue(std::move(description), false);
}

ProcessGroup::Work NcclProcessGroup::start_barrier(std::string description) {
  // NCCL has no barrier: an all-reduce of one float, waited for on the host.
  FSDP_NCCL_CHECK(ncclAllReduce(barrier_scratch_, barrier_scratch_, 1, ncclFloat32, ncclSum,
                                communicator_, communication_stream_));
  return finish_enqueue(std::move(description), true);
}

}  // namespace fsdp
