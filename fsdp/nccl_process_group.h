// The NCCL backend of ProcessGroup: CUDA memory, one rank per GPU.
//
// Note [Comm stream ordering]
// Collectives run on this group's own communication stream so that they can
// overlap compute. Each collective first waits (on the device) for the work
// already queued on the compute stream, so it sees the data that work writes;
// CollectiveWork::wait() makes the compute stream wait for the collective, so
// later compute sees its results. Neither blocks the host. The compute stream
// defaults to the legacy default stream, which is the one libtorch uses unless
// a caller sets another current stream; callers that do must say so through
// set_compute_stream().
//
// wait() reads the compute stream when it is called, not when the collective
// was enqueued, so a caller that switched streams in between is ordered too.
// A work destroyed without wait() waits for it first (on the device), so
// memory the caller frees afterwards on the compute stream is not reused while
// NCCL still writes it. The spans themselves must outlive the collective
// (process_group.h); the runtime's are stage buffers and shards, which do.
//
// Deadlines: device collectives do not block the host. The group's watchdog
// thread (Note [Collective watchdog]) ends the job when one fails or is still
// running after the group's timeout; synchronize() and barrier() also poll
// with that timeout. The communicator is created non-blocking, so joining it
// has the same deadline.
//
// Staging: 16-bit reductions go through float32 staging buffers on the
// communication stream, from the allocator set with set_staging_allocator()
// (the runtime passes libtorch's caching allocator when its libtorch has CUDA)
// or else cudaMallocAsync's stream-ordered pool.
#pragma once

#include <cstddef>
#include <functional>
#include <memory>

#include "fsdp/process_group.h"

// Opaque CUDA and NCCL handles, so that this header needs neither library's headers.
struct CUstream_st;
struct CUevent_st;
struct ncclComm;

namespace fsdp {

class MpiProcessGroup;
class CollectiveWatchdog;

// Stream-ordered device memory for staging buffers. `allocate(bytes, stream)`
// returns memory usable on `stream`; `free(pointer)` returns it once the work
// enqueued on that stream so far no longer needs it (both are stream-ordered,
// as libtorch's caching allocator and cudaMallocAsync are).
struct DeviceAllocator {
  std::function<void*(std::size_t bytes, CUstream_st* stream)> allocate;
  std::function<void(void* pointer, CUstream_st* stream)> free;
};

class NcclProcessGroup final : public ProcessGroup {
 public:
  // Collective over `bootstrap`'s ranks: rank 0 creates NCCL's unique id and
  // broadcasts it over MPI, then every rank joins the communicator on
  // `cuda_device`, within the bootstrap group's timeout. REQUIRES: every rank
  // has a GPU of its own (NCCL refuses two ranks on one GPU). Throws
  // CommunicationError naming the failing call, CollectiveTimeoutError when
  // the peers do not all join in time.
  static std::unique_ptr<NcclProcessGroup> create(MpiProcessGroup& bootstrap, int cuda_device);

  // Stops the watchdog, then destroys the communicator and stream; never blocks on peers.
  ~NcclProcessGroup() override;

  std::string_view backend_name() const override { return "nccl"; }
  // Float32 copies of 16-bit input (and output); NCCL's own buffers are
  // allocated with the communicator, not per call.
  std::int64_t reduce_scatter_scratch_bytes(std::int64_t input_numel, ElementType input,
                                            ElementType output) const override;
  MemoryLocation memory_location() const override { return MemoryLocation::kCuda; }
  int cuda_device() const { return cuda_device_; }

  // See Note [Comm stream ordering]. nullptr is the legacy default stream.
  // A source, when set, is asked each time instead: the runtime passes
  // libtorch's current stream when its libtorch has CUDA.
  void set_compute_stream(CUstream_st* stream) { compute_stream_ = stream; }
  void set_compute_stream_source(std::function<CUstream_st*()> source) {
    compute_stream_source_ = std::move(source);
  }
  CUstream_st* compute_stream() const {
    return compute_stream_source_ ? compute_stream_source_() : compute_stream_;
  }
  void* cuda_compute_stream() const override { return compute_stream(); }
  CUstream_st* communication_stream() const { return communication_stream_; }

  // Where staging buffers come from (see above); unset members mean cudaMallocAsync.
  // The memory report counts them from the layout (ModelMemory::collective_staging).
  void set_staging_allocator(DeviceAllocator allocator);

  // Blocks the host until every collective issued so far has completed, at most
  // timeout(); throws CollectiveTimeoutError or CommunicationError (with NCCL's
  // asynchronous error) otherwise.
  void synchronize();

  // Aborts the NCCL communicator (so no rank stays stuck in a kernel), then the MPI job.
  [[noreturn]] void abort_job(std::string_view message) override;

  // "NCCL 2.27.3", for messages and reports.
  static std::string nccl_version();

 private:
  NcclProcessGroup(int rank, int size, std::string host, std::chrono::milliseconds timeout,
                   int cuda_device, ncclComm* communicator);

  Work start_all_gather_in_place(TensorSpan buffer, std::string description) override;
  Work start_reduce_scatter(TensorSpan input, TensorSpan output, ReduceOp op,
                            std::string description) override;
  Work start_all_reduce(TensorSpan buffer, ReduceOp op, std::string description) override;
  Work start_broadcast(TensorSpan buffer, int root, std::string description) override;
  Work start_barrier(std::string description) override;

  // Makes the communication stream wait for work queued so far on the compute stream.
  void order_after_compute();
  // After an NCCL call on the non-blocking communicator: waits (with the
  // group's timeout) while it reports ncclInProgress.
  void wait_while_in_progress(const char* call);
  // `count` float32 elements of staging memory on the communication stream,
  // given back (in stream order) when the pointer goes, also when a launch
  // between throws.
  using StagingPointer = std::unique_ptr<float, std::function<void(float*)>>;
  StagingPointer allocate_staging(std::int64_t count);
  // Records completion of the collective just enqueued and returns its work handle.
  Work finish_enqueue(std::string description, bool host_blocking);
  void check_async_error(const std::string& context);

  int cuda_device_ = -1;
  ncclComm* communicator_ = nullptr;
  CUstream_st* communication_stream_ = nullptr;
  CUstream_st* compute_stream_ = nullptr;
  std::function<CUstream_st*()> compute_stream_source_;
  CUevent_st* compute_ready_ = nullptr;
  float* barrier_scratch_ = nullptr;  // one float on the device, all-reduced by barrier()
  bool aborted_ = false;
  DeviceAllocator staging_allocator_;
  // Stopped first thing in the destructor: its thread polls the communicator.
  std::unique_ptr<CollectiveWatchdog> watchdog_;
};

}  // namespace fsdp
