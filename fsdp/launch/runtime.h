// Process bootstrap: one RAII object per process that owns MPI, the rank
// topology, the CUDA device binding and the process groups.
//
//   Runtime runtime(&argc, &argv);      // MPI_Init_thread; works without mpirun (a world of one)
//   runtime.connect(options);           // device binding; NCCL or MPI process group
//   auto group = runtime.process_group();
//
// Most programs do not build one by hand: run_program() (fsdp/launch/program.h)
// wraps main so that any rank's failure ends the whole job with its message.
#pragma once

#include <chrono>
#include <memory>
#include <string>
#include <string_view>

#include "fsdp/launch/backend_choice.h"
#include "fsdp/mpi_process_group.h"
#include "fsdp/process_group.h"

namespace fsdp::launch {

struct RuntimeOptions {
  BackendChoice backend = BackendChoice::kAuto;
  std::chrono::milliseconds collective_timeout = kDefaultCollectiveTimeout;
};

class Runtime {
 public:
  // Initialises MPI with MPI_THREAD_MULTIPLE and learns the topology. Local
  // rank comes from MPI's shared-memory split (MPI_COMM_TYPE_SHARED), not from
  // a launcher's environment variable, so it is right under any launcher.
  // When MPI_Init and the topology exchange have not finished within
  // `bootstrap_timeout` (a peer stopped or hung at launch), the process ends
  // with a message (deadline_watchdog.h) instead of waiting forever.
  // REQUIRES: one Runtime per process.
  explicit Runtime(int* argc, char*** argv,
                   std::chrono::milliseconds bootstrap_timeout = kDefaultCollectiveTimeout);
  // Destroys the process groups, then finalises MPI.
  ~Runtime();
  Runtime(const Runtime&) = delete;
  Runtime& operator=(const Runtime&) = delete;

  // Creates the process groups: always an MPI group (host collectives, NCCL
  // bootstrap), plus an NCCL group when the backend resolves to NCCL
  // (backend_choice.h), for which this rank binds CUDA device local_rank %
  // visible devices. Under BackendChoice::kMpi no CUDA call is made.
  // Collective; its device exchange ends the job after
  // options.collective_timeout like the bootstrap. Throws ConfigurationError
  // when NCCL is requested but impossible, or the NVIDIA driver is too old.
  void connect(const RuntimeOptions& options);

  int rank() const { return rank_; }
  int world_size() const { return world_size_; }
  int local_rank() const { return local_rank_; }
  int local_world_size() const { return local_world_size_; }
  // CPU threads each rank should compute with so that the ranks of one host
  // do not oversubscribe its cores: OMP_NUM_THREADS when set, otherwise
  // cores / local ranks (at least 1), as torchrun does. Oversubscribed
  // OpenMP teams spin-wait on each other and can run several times slower.
  int compute_threads() const;
  const std::string& host_name() const { return host_name_; }
  // The bound CUDA device, or -1 when this rank runs on the host.
  int cuda_device() const { return cuda_device_; }
  bool uses_nccl() const { return device_group_ != nullptr; }

  // REQUIRES: connect() was called (throws std::logic_error otherwise).
  // The group for the runtime's buffers: NCCL when in use, otherwise MPI.
  std::shared_ptr<ProcessGroup> process_group() const;
  // The MPI group over every rank (host memory).
  std::shared_ptr<MpiProcessGroup> host_group() const;

  // Ends the whole job now with `message`, naming this rank and host; aborts
  // NCCL first so no peer stays stuck in a kernel. Never returns.
  [[noreturn]] void abort_job(std::string_view message) const;

  // One line: "4 ranks on 1 host, backend mpi, rank 0 local 0/4 on host-a, no GPU".
  std::string describe() const;

 private:
  int rank_ = 0;
  int world_size_ = 1;
  int local_rank_ = 0;
  int local_world_size_ = 1;
  int host_count_ = 1;
  std::string host_name_;
  int cuda_device_ = -1;
  std::shared_ptr<MpiProcessGroup> host_group_;
  std::shared_ptr<ProcessGroup> device_group_;
};

}  // namespace fsdp::launch
