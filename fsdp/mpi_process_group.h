// The MPI backend of ProcessGroup: host memory, non-blocking MPI collectives
// (MPI_Iallgather, MPI_Ireduce_scatter_block, ...), waited for by polling so
// that every wait has a deadline (Note [Collective deadlines]).
//
// Limits: MPI counts are `int`, so one collective moves at most 2^31 - 1
// elements per rank; a larger request is refused with a message that says
// so (split the model into more stages). The NCCL backend has no such limit.
#pragma once

#include <mpi.h>

#include <memory>

#include "fsdp/mpi_progress.h"
#include "fsdp/process_group.h"

namespace fsdp {

class MpiProcessGroup final : public ProcessGroup {
 public:
  // REQUIRES: MPI is initialised. Collective over `communicator`: duplicates it,
  // so the runtime's collectives never match a caller's own traffic.
  explicit MpiProcessGroup(MPI_Comm communicator,
                           std::chrono::milliseconds timeout = kDefaultCollectiveTimeout);
  // Frees the duplicate if MPI is still initialised; never blocks on peers.
  ~MpiProcessGroup() override;

  std::string_view backend_name() const override { return "mpi"; }
  // The pieces' staging, if any, and Open MPI's scratch for each call: as
  // large as the call's input at one or two ranks, twice as large from three
  // ranks on (Open MPI 4.1's non-blocking reduce-scatter, measured; an
  // all-gather allocates none).
  std::int64_t reduce_scatter_scratch_bytes(std::int64_t input_numel, ElementType input,
                                            ElementType output) const override;
  MemoryLocation memory_location() const override { return MemoryLocation::kHost; }
  MPI_Comm communicator() const { return communicator_; }

  // bfloat16 and float16 are reduced in float32 through a staging area of at
  // most this many float32 elements per collective, one piece at a time: a
  // full-size float32 copy would double the memory of the buffer being reduced,
  // against docs/DESIGN.md's bound (shards + live buffers + a bounded chunk).
  // A float32 reduce-scatter larger than the area goes through it in pieces
  // too, which bounds Open MPI's own scratch (as large as the input otherwise).
  static constexpr std::int64_t kDefaultStagingElements = std::int64_t{1} << 22;  // 16 MiB
  std::int64_t staging_elements() const { return staging_elements_; }
  // For tuning, and for tests that need many pieces. REQUIRES: elements >= 1.
  void set_staging_elements(std::int64_t elements);

  [[noreturn]] void abort_job(std::string_view message) override;

  // Drives collectives that nobody is waiting on (Note [MPI progress]).
  MpiProgressEngine& progress_engine() { return *progress_; }
  bool has_background_progress() const { return progress_->running(); }

 private:
  Work start_all_gather_in_place(TensorSpan buffer, std::string description) override;
  Work start_reduce_scatter(TensorSpan input, TensorSpan output, ReduceOp op,
                            std::string description) override;
  Work start_all_reduce(TensorSpan buffer, ReduceOp op, std::string description) override;
  Work start_broadcast(TensorSpan buffer, int root, std::string description) override;
  Work start_barrier(std::string description) override;

  // Whether a reduce-scatter of `input_numel` elements of `type` is one MPI
  // call, not pieces through float32 staging.
  bool reduces_in_one_call(std::int64_t input_numel, ElementType type) const;
  // The elements of every rank's chunk that one piece reduces.
  std::int64_t reduce_scatter_piece(std::int64_t chunk) const;

  MPI_Comm communicator_ = MPI_COMM_NULL;
  std::int64_t staging_elements_ = kDefaultStagingElements;
  std::unique_ptr<MpiProgressEngine> progress_;
};

}  // namespace fsdp
