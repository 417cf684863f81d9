#include "fsdp/mpi_process_group.h"

#include <climits>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <thread>
#include <vector>

#include "fsdp/communication_checks.h"
#include "kernels/cast.h"

namespace fsdp {
namespace {

std::string host_name() {
  char name[MPI_MAX_PROCESSOR_NAME] = {};
  int length = 0;
  if (MPI_Get_processor_name(name, &length) != MPI_SUCCESS) return "unknown-host";
  return std::string(name, length);
}

int rank_in(MPI_Comm communicator) {
  int rank = 0;
  FSDP_MPI_CHECK(MPI_Comm_rank(communicator, &rank));
  return rank;
}

int size_of(MPI_Comm communicator) {
  int size = 0;
  FSDP_MPI_CHECK(MPI_Comm_size(communicator, &size));
  return size;
}

// bfloat16 and float16 travel as 16-bit words: MPI has no such types, and they
// are only ever moved, never reduced, in that form.
MPI_Datatype datatype_for_moving(ElementType type) {
  switch (type) {
    case ElementType::kFloat32:
      return MPI_FLOAT;
    case ElementType::kFloat64:
      return MPI_DOUBLE;
    case ElementType::kBFloat16:
    case ElementType::kFloat16:
      return MPI_UINT16_T;
    case ElementType::kInt8:
      return MPI_INT8_T;
    case ElementType::kUInt8:
      return MPI_UINT8_T;
    case ElementType::kInt32:
      return MPI_INT32_T;
    case ElementType::kInt64:
      return MPI_INT64_T;
  }
  throw std::invalid_argument("mpi process group: unknown element type");
}

MPI_Op mpi_op(ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum:
    case ReduceOp::kAverage:  // a sum, divided afterwards
      return MPI_SUM;
    case ReduceOp::kMin:
      return MPI_MIN;
    case ReduceOp::kMax:
      return MPI_MAX;
  }
  throw std::invalid_argument("mpi process group: unknown reduce op");
}

int mpi_count(std::int64_t count, const std::string& description) {
  if (count > INT_MAX) {
    throw std::invalid_argument(description + ": " + std::to_string(count) +
                                " elements per rank exceed MPI's int count limit (" +
                                std::to_string(INT_MAX) +
                                "); split the model into more stages or use the NCCL backend");
  }
  return static_cast<int>(count);
}

std::unique_ptr<float[]> float32_copy(TensorSpan span) {
  std::unique_ptr<float[]> copy(new float[span.numel > 0 ? span.numel : 1]);
  kernels::cast_on_host(span.data, span.type, copy.get(), ElementType::kFloat32, span.numel);
  return copy;
}

class MpiWork final : public CollectiveWork {
 public:
  MpiWork(MpiProcessGroup& group, std::string description)
      : CollectiveWork(std::move(description)), group_(group) {}

  ~MpiWork() override {
    if (finished_) return;
    // A collective cannot be cancelled, and MPI may still write into buffers
    // that are about to be freed: the job must end. After a timeout, end it at
    // once with that message rather than waiting out a second timeout.
    if (!timeout_message_.empty()) group_.abort_job(timeout_message_);
    try {
      wait();
    } catch (const std::exception& error) {
      group_.abort_job(error.what());
    }
  }

  MPI_Request* request() { return &request_; }
  // Runs once, on completion: casts results back, divides averages, frees staging.
  void set_finish(std::function<void()> finish) { finish_ = std::move(finish); }

  void wait() override {
    if (finished_) return;
    const auto deadline = std::chrono::steady_clock::now() + group_.timeout();
    while (!poll()) {
      if (std::chrono::steady_clock::now() > deadline) {
        timeout_message_ = description() + " did not complete within " +
                           format_seconds(group_.timeout()) +
                           ": a peer rank has probably failed, stopped early, or issued its "
                           "collectives in a different order";
        throw CollectiveTimeoutError(timeout_message_);
      }
      // Ranks are often oversubscribed (more ranks than cores): let the peers run.
      std::this_thread::yield();
    }
  }

  bool is_completed() override { return finished_ || poll(); }

 private:
  bool poll() {
    int done = 0;
    FSDP_MPI_CHECK(MPI_Test(&request_, &done, MPI_STATUS_IGNORE));
    if (!done) return false;
    finished_ = true;
    if (finish_) {
      auto finish = std::move(finish_);
      finish();
    }
    return true;
  }

  MpiProcessGroup& group_;
  MPI_Request request_ = MPI_REQUEST_NULL;
  std::function<void()> finish_;
  std::string timeout_message_;  // set when a wait() gave up
  bool finished_ = false;
};

}  // namespace

MpiProcessGroup::MpiProcessGroup(MPI_Comm communicator, std::chrono::milliseconds timeout)
    : ProcessGroup(rank_in(communicator), size_of(communicator), host_name(), timeout) {
  FSDP_MPI_CHECK(MPI_Comm_dup(communicator, &communicator_));
  // Errors come back as codes, so they can be reported with the call and the rank.
  FSDP_MPI_CHECK(MPI_Comm_set_errhandler(communicator_, MPI_ERRORS_RETURN));
}

MpiProcessGroup::~MpiProcessGroup() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized && communicator_ != MPI_COMM_NULL) MPI_Comm_free(&communicator_);
}

void MpiProcessGroup::abort_job(std::string_view message) {
  std::fprintf(stderr, "[fsdp %s] fatal: %.*s\n", rank_description().c_str(),
               static_cast<int>(message.size()), message.data());
  std::fflush(stderr);
  MPI_Abort(MPI_COMM_WORLD, 1);
  std::_Exit(1);  // MPI_Abort does not return; this is for an MPI that does.
}

ProcessGroup::Work MpiProcessGroup::start_all_gather_in_place(TensorSpan buffer,
                                                              std::string description) {
  const int count = mpi_count(buffer.numel / size(), description);
  auto work = std::make_unique<MpiWork>(*this, std::move(description));
  const MPI_Datatype type = datatype_for_moving(buffer.type);
  FSDP_MPI_CHECK(MPI_Iallgather(MPI_IN_PLACE, 0, type, buffer.data, count, type, communicator_,
                                work->request()));
  return work;
}

ProcessGroup::Work MpiProcessGroup::start_reduce_scatter(TensorSpan input, TensorSpan output,
                                                         ReduceOp op, std::string description) {
  const int count = mpi_count(output.numel, description);
  auto work = std::make_unique<MpiWork>(*this, std::move(description));
  const int ranks = size();
  if (!is_half_precision(input.type)) {
    const MPI_Datatype type = datatype_for_moving(input.type);
    FSDP_MPI_CHECK(MPI_Ireduce_scatter_block(input.data, output.data, count, type, mpi_op(op),
                                             communicator_, work->request()));
    if (op == ReduceOp::kAverage) {
      work->set_finish([output, ranks] {
        kernels::divide_on_host(output.data, output.type, output.numel, ranks);
      });
    }
    return work;
  }
  // 16-bit floats: reduce in float32, round once at the end (if the output is 16-bit).
  std::shared_ptr<float[]> input32 = float32_copy(input);
  std::shared_ptr<float[]> output32;
  float* reduced = static_cast<float*>(output.data);
  if (output.type != ElementType::kFloat32) {
    output32.reset(new float[count > 0 ? count : 1]);
    reduced = output32.get();
  }
  FSDP_MPI_CHECK(MPI_Ireduce_scatter_block(input32.get(), reduced, count, MPI_FLOAT, mpi_op(op),
                                           communicator_, work->request()));
  work->set_finish([input32, output32, reduced, output, op, ranks]() mutable {
    if (op == ReduceOp::kAverage) {
      kernels::divide_on_host(reduced, ElementType::kFloat32, output.numel, ranks);
    }
    if (output32) {
      kernels::cast_on_host(reduced, ElementType::kFloat32, output.data, output.type, output.numel);
    }
    input32.reset();
    output32.reset();
  });
  return work;
}

ProcessGroup::Work MpiProcessGroup::start_all_reduce(TensorSpan buffer, ReduceOp op,
                                                     std::string description) {
  const int count = mpi_count(buffer.numel, description);
  auto work = std::make_unique<MpiWork>(*this, std::move(description));
  const int ranks = size();
  if (!is_half_precision(buffer.type)) {
    FSDP_MPI_CHECK(MPI_Iallreduce(MPI_IN_PLACE, buffer.data, count,
                                  datatype_for_moving(buffer.type), mpi_op(op), communicator_,
                                  work->request()));
    if (op == ReduceOp::kAverage) {
      work->set_finish([buffer, ranks] {
        kernels::divide_on_host(buffer.data, buffer.type, buffer.numel, ranks);
      });
    }
    return work;
  }
  std::shared_ptr<float[]> values32 = float32_copy(buffer);
  FSDP_MPI_CHECK(MPI_Iallreduce(MPI_IN_PLACE, values32.get(), count, MPI_FLOAT, mpi_op(op),
                                communicator_, work->request()));
  work->set_finish([values32, buffer, op, ranks]() mutable {
    if (op == ReduceOp::kAverage) {
      kernels::divide_on_host(values32.get(), ElementType::kFloat32, buffer.numel, ranks);
    }
    kernels::cast_on_host(values32.get(), ElementType::kFloat32, buffer.data, buffer.type,
                          buffer.numel);
    values32.reset();
  });
  return work;
}

ProcessGroup::Work MpiProcessGroup::start_broadcast(TensorSpan buffer, int root,
                                                    std::string description) {
  const int count = mpi_count(buffer.numel, description);
  auto work = std::make_unique<MpiWork>(*this, std::move(description));
  FSDP_MPI_CHECK(MPI_Ibcast(buffer.data, count, datatype_for_moving(buffer.type), root,
                            communicator_, work->request()));
  return work;
}

ProcessGroup::Work MpiProcessGroup::start_barrier(std::string description) {
  auto work = std::make_unique<MpiWork>(*this, std::move(description));
  FSDP_MPI_CHECK(MPI_Ibarrier(communicator_, work->request()));
  return work;
}

}  // namespace fsdp
