// Collectives over the ranks of one group: the only way runtime code talks to
// other ranks.
//
// Two implementations: MpiProcessGroup (host memory, Open MPI) and
// NcclProcessGroup (CUDA memory, one rank per GPU). Both take TensorSpans, so
// counts always come from the data, never from a hand-computed byte count.
//
// Every collective has an asynchronous form returning a CollectiveWork and a
// blocking form (the asynchronous one followed by wait()). As with any
// collective library, every rank of the group must issue the same collectives
// in the same order with matching counts and types; a rank that does not
// shows up as a timeout on the others (see Note [Collective deadlines]).
//
// Note [Collective deadlines]
// Nothing in the runtime waits without a deadline on something another rank
// must do: a peer that died or took another path must end the job with a
// message, never hang it. CollectiveWork::wait() gives up after the
// group's timeout and throws CollectiveTimeoutError naming the collective, the
// rank and the host; the launcher turns that, like any error, into an abort of
// the whole job. A waiting rank polls rather than blocking inside MPI, so it
// can check the clock.
#pragma once

#include <chrono>
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>

#include "fsdp/errors.h"
#include "fsdp/tensor_span.h"

namespace fsdp {

enum class ReduceOp { kSum, kAverage, kMin, kMax };
std::string_view reduce_op_name(ReduceOp op);

// A collective that did not finish within the group's timeout.
class CollectiveTimeoutError : public CollectiveError {
 public:
  using CollectiveError::CollectiveError;
};

// A failure reported by MPI, NCCL or CUDA (the message names the call, the rank and the host).
class CommunicationError : public CollectiveError {
 public:
  using CollectiveError::CollectiveError;
};

// An in-flight collective.
//
// Thread-safety: a work object is used by one thread at a time.
// Lifetime: the spans given to the collective must stay valid until wait()
// returns (or is_completed() returns true). Destroying a work that was never
// waited for waits for it first; if that times out the job is aborted, since a
// destructor must neither throw nor block forever. A collective cannot be
// cancelled: destroying a work whose wait() timed out (and that has not
// completed since) aborts the job with the timeout's message.
class CollectiveWork {
 public:
  virtual ~CollectiveWork() = default;
  CollectiveWork(const CollectiveWork&) = delete;
  CollectiveWork& operator=(const CollectiveWork&) = delete;

  // Blocks until the collective's results are usable by this rank's later work:
  // on the host for MPI; ordered before later work on the compute stream for
  // NCCL (the host does not block then). Idempotent.
  // Throws CollectiveTimeoutError after the group's timeout, CommunicationError on failure.
  virtual void wait() = 0;
  // True once complete (and then finishes it like wait()). Never blocks on peers.
  virtual bool is_completed() = 0;

  // What this collective is, for messages: "all_gather_in_place of 1024 float32 on rank 1 (host)".
  const std::string& description() const { return description_; }

 protected:
  explicit CollectiveWork(std::string description) : description_(std::move(description)) {}

 private:
  std::string description_;
};

class ProcessGroup {
 public:
  using Work = std::unique_ptr<CollectiveWork>;

  virtual ~ProcessGroup() = default;
  ProcessGroup(const ProcessGroup&) = delete;
  ProcessGroup& operator=(const ProcessGroup&) = delete;

  int rank() const { return rank_; }
  int size() const { return size_; }
  virtual std::string_view backend_name() const = 0;
  // Where this group's spans must live (host memory for MPI, CUDA memory for NCCL).
  virtual MemoryLocation memory_location() const = 0;
  // The CUDA stream (a cudaStream_t) that device work using this group's
  // results must run on, so that it is ordered after the collectives (Note
  // [Comm stream ordering]); nullptr, the legacy default stream, for host groups.
  virtual void* cuda_compute_stream() const { return nullptr; }

  // How long wait() waits before giving up (Note [Collective deadlines]).
  std::chrono::milliseconds timeout() const { return timeout_; }
  void set_timeout(std::chrono::milliseconds timeout) { timeout_ = timeout; }

  // In-place all-gather.
  // REQUIRES: buffer.numel is a multiple of size(). Let n = buffer.numel / size().
  // On entry elements [rank * n, (rank + 1) * n) hold this rank's contribution;
  // on completion chunk r holds rank r's contribution, on every rank. Any type.
  Work all_gather_in_place_async(TensorSpan buffer);
  void all_gather_in_place(TensorSpan buffer) { all_gather_in_place_async(buffer)->wait(); }

  // Reduce-scatter: chunk r of the element-wise reduction of every rank's
  // `input` lands in rank r's `output`.
  // REQUIRES: input.numel == output.numel * size(); output does not overlap input;
  // output.type == input.type, or float32 when input is bfloat16/float16.
  // bfloat16 and float16 are reduced in float32 (then rounded once if the output
  // is 16-bit). kAverage is defined for floating-point types only: the float32
  // (or float64) sum divided by size().
  Work reduce_scatter_async(TensorSpan input, TensorSpan output, ReduceOp op);
  void reduce_scatter(TensorSpan input, TensorSpan output, ReduceOp op) {
    reduce_scatter_async(input, output, op)->wait();
  }

  // The most memory, in bytes, that a reduce-scatter of `input_numel`
  // elements of type `input` into `output` allocates for itself while it runs
  // (staging copies, the communication library's scratch), beyond its input
  // and output: the memory report counts it (ModelMemory::collective_staging).
  virtual std::int64_t reduce_scatter_scratch_bytes(std::int64_t input_numel, ElementType input,
                                                    ElementType output) const = 0;

  // In-place all-reduce, same type rules as reduce_scatter.
  Work all_reduce_async(TensorSpan buffer, ReduceOp op);
  void all_reduce(TensorSpan buffer, ReduceOp op) { all_reduce_async(buffer, op)->wait(); }

  // Copies root's buffer into every rank's buffer. Any type.
  Work broadcast_async(TensorSpan buffer, int root);
  void broadcast(TensorSpan buffer, int root) { broadcast_async(buffer, root)->wait(); }

  Work barrier_async();
  void barrier() { barrier_async()->wait(); }

  // Ends the whole job at once with `message` (printed with rank and host) and a
  // non-zero exit status, without waiting on any peer. For fatal paths only.
  [[noreturn]] virtual void abort_job(std::string_view message) = 0;

  // "rank 1/4 on host-a", for messages.
  std::string rank_description() const;

 protected:
  ProcessGroup(int rank, int size, std::string host, std::chrono::milliseconds timeout);

  // The implementations. Arguments are already validated.
  virtual Work start_all_gather_in_place(TensorSpan buffer, std::string description) = 0;
  virtual Work start_reduce_scatter(TensorSpan input, TensorSpan output, ReduceOp op,
                                    std::string description) = 0;
  virtual Work start_all_reduce(TensorSpan buffer, ReduceOp op, std::string description) = 0;
  virtual Work start_broadcast(TensorSpan buffer, int root, std::string description) = 0;
  virtual Work start_barrier(std::string description) = 0;

  const std::string& host() const { return host_; }

 private:
  void check_location(TensorSpan span, std::string_view collective) const;
  void check_reduction(TensorSpan input, TensorSpan output, ReduceOp op,
                       std::string_view collective) const;
  std::string describe(std::string_view collective, TensorSpan span) const;

  int rank_ = 0;
  int size_ = 1;
  std::string host_;
  std::chrono::milliseconds timeout_;
};

// "0.3 s", "600 s": a duration for messages.
std::string format_seconds(std::chrono::milliseconds duration);

// The default collective timeout: ten minutes, as in PyTorch's process groups.
inline constexpr std::chrono::milliseconds kDefaultCollectiveTimeout{10 * 60 * 1000};

}  // namespace fsdp
