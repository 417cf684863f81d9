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
// Deadlines: device collectives do not block the host, so their deadline is
// enforced where the host does wait: synchronize() and barrier(), which poll
// the stream and NCCL's asynchronous error state with the group's timeout.
#pragma once

#include <memory>

#include "fsdp/process_group.h"

// Opaque CUDA and NCCL handles, so that this header needs neither library's headers.
struct CUstream_st;
struct CUevent_st;
struct ncclComm;

namespace fsdp {

class MpiProcessGroup;

class NcclProcessGroup final : public ProcessGroup {
 public:
  // Collective over `bootstrap`'s ranks: rank 0 creates NCCL's unique id and
  // broadcasts it over MPI, then every rank joins the communicator on
  // `cuda_device`. REQUIRES: every rank has a GPU of its own (NCCL refuses two
  // ranks on one GPU). Throws CommunicationError naming the failing call.
  static std::unique_ptr<NcclProcessGroup> create(MpiProcessGroup& bootstrap, int cuda_device);

  // Destroys the communicator and stream; never blocks on peers.
  ~NcclProcessGroup() override;

  std::string_view backend_name() const override { return "nccl"; }
  MemoryLocation memory_location() const override { return MemoryLocation::kCuda; }
  int cuda_device() const { return cuda_device_; }

  // See Note [Comm stream ordering]. nullptr is the legacy default stream.
  void set_compute_stream(CUstream_st* stream) { compute_stream_ = stream; }
  CUstream_st* communication_stream() const { return communication_stream_; }

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
  // Records completion of the collective just enqueued and returns its work handle.
  Work finish_enqueue(std::string description, bool host_blocking);
  void check_async_error(const std::string& context);

  int cuda_device_ = -1;
  ncclComm* communicator_ = nullptr;
  CUstream_st* communication_stream_ = nullptr;
  CUstream_st* compute_stream_ = nullptr;
  CUevent_st* compute_ready_ = nullptr;
  float* barrier_scratch_ = nullptr;  // one float on the device, all-reduced by barrier()
  bool aborted_ = false;
};

}  // namespace fsdp
