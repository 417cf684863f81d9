#include "fsdp/mpi_process_group.h"

#include <algorithm>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <thread>
#include <vector>

#include "fsdp/communication_checks.h"
#include "fsdp/kernels/cast.h"

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

// A collective run as a sequence of non-blocking MPI operations ("pieces"),
// one in flight at a time; most collectives are a single piece.
class MpiWork final : public CollectiveWork {
 public:
  using StartPiece = std::function<void(std::int64_t piece, MPI_Request* request)>;
  using FinishPiece = std::function<void(std::int64_t piece)>;

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

  // Starts piece 0 now; each later piece starts when the previous one has
  // completed and been finished. `finish` may be empty.
  void run(std::int64_t pieces, StartPiece start, FinishPiece finish = {}) {
    piece_count_ = pieces;
    start_ = std::move(start);
    finish_ = std::move(finish);
    if (piece_count_ == 0) {
      finished_ = true;
      return;
    }
    start_piece(0);
    group_.progress_engine().add_unattended();  // Note [MPI progress]
    unattended_ = true;
  }

  void wait() override {
    if (finished_) return;
    attend();  // this thread polls from here on
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
  // Advances through every piece that has completed; true once all have.
  bool poll() {
    while (!finished_) {
      int done = 0;
      FSDP_MPI_CHECK(MPI_Test(&request_, &done, MPI_STATUS_IGNORE));
      if (!done) return false;
      if (finish_) finish_(piece_);
      if (++piece_ == piece_count_) {
        finished_ = true;
        attend();
        start_ = nullptr;  // releases staging memory the pieces captured
        finish_ = nullptr;
      } else {
        start_piece(piece_);
      }
    }
    return true;
  }

  // A piece whose MPI call failed never started: nothing is in flight, so the
  // work is over (and the destructor must not "finish" a piece that never ran).
  void start_piece(std::int64_t piece) {
    try {
      start_(piece, &request_);
    } catch (...) {
      finished_ = true;
      throw;
    }
  }

  void attend() {
    if (!unattended_) return;
    unattended_ = false;
    group_.progress_engine().remove_unattended();
  }

  MpiProcessGroup& group_;
  MPI_Request request_ = MPI_REQUEST_NULL;
  StartPiece start_;
  FinishPiece finish_;
  std::int64_t piece_ = 0;
  std::int64_t piece_count_ = 0;
  std::string timeout_message_;  // set when a wait() gave up
  bool finished_ = false;
  bool unattended_ = false;  // counted by the progress engine
};

std::int64_t pieces_for(std::int64_t count, std::int64_t piece_size) {
  return piece_size > 0 ? (count + piece_size - 1) / piece_size : 0;
}

}  // namespace

MpiProcessGroup::MpiProcessGroup(MPI_Comm communicator, std::chrono::milliseconds timeout)
    : ProcessGroup(rank_in(communicator), size_of(communicator), host_name(), timeout) {
  FSDP_MPI_CHECK(MPI_Comm_dup(communicator, &communicator_));
  // Errors come back as codes, so they can be reported with the call and the rank.
  FSDP_MPI_CHECK(MPI_Comm_set_errhandler(communicator_, MPI_ERRORS_RETURN));
  progress_ = std::make_unique<MpiProgressEngine>(communicator_);
}

void MpiProcessGroup::set_staging_elements(std::int64_t elements) {
  if (elements < 1) {
    throw std::invalid_argument("staging size must be at least 1 element, got " +
                                std::to_string(elements));
  }
  staging_elements_ = elements;
}

MpiProcessGroup::~MpiProcessGroup() {
  progress_.reset();
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
  work->run(1, [=](std::int64_t, MPI_Request* request) {
    FSDP_MPI_CHECK(
        MPI_Iallgather(MPI_IN_PLACE, 0, type, buffer.data, count, type, communicator_, request));
  });
  return work;
}

// One MPI call when the whole input fits the staging bound (or is neither
// 16-bit nor float32). A larger float32 input goes in pieces like a 16-bit
// one: Open MPI's non-blocking reduce-scatter allocates scratch as large as
// its input or larger (reduce_scatter_scratch_bytes), and for a stage's whole
// gradient buffer that transient (100 MiB at a 48 MiB stage) outweighed the
// copy into staging.
bool MpiProcessGroup::reduces_in_one_call(std::int64_t input_numel, ElementType type) const {
  return !is_half_precision(type) &&
         (type != ElementType::kFloat32 || input_numel <= staging_elements_);
}

std::int64_t MpiProcessGroup::reduce_scatter_piece(std::int64_t chunk) const {
  return std::max<std::int64_t>(1, std::min(chunk, staging_elements_ / size()));
}

std::int64_t MpiProcessGroup::reduce_scatter_scratch_bytes(std::int64_t input_numel,
                                                           ElementType input,
                                                           ElementType output) const {
  const int ranks = size();
  auto library_scratch = [ranks](std::int64_t call_input_bytes) {
    return ranks <= 2 ? call_input_bytes : 2 * call_input_bytes;
  };
  if (reduces_in_one_call(input_numel, input)) {
    return library_scratch(input_numel * element_size(input));
  }
  const std::int64_t float32 = element_size(ElementType::kFloat32);
  const std::int64_t piece = reduce_scatter_piece(input_numel / ranks);
  const std::int64_t staging_in = piece * ranks * float32;
  const std::int64_t staging_out = output == ElementType::kFloat32 ? 0 : piece * float32;
  return staging_in + staging_out + library_scratch(staging_in);
}

ProcessGroup::Work MpiProcessGroup::start_reduce_scatter(TensorSpan input, TensorSpan output,
                                                         ReduceOp op, std::string description) {
  const std::int64_t chunk = output.numel;  // elements each rank receives
  const int count = mpi_count(chunk, description);
  auto work = std::make_unique<MpiWork>(*this, std::move(description));
  const int ranks = size();
  const MPI_Op reduction = mpi_op(op);
  if (reduces_in_one_call(input.numel, input.type)) {
    const MPI_Datatype type = datatype_for_moving(input.type);
    work->run(
        1,
        [=](std::int64_t, MPI_Request* request) {
          FSDP_MPI_CHECK(MPI_Ireduce_scatter_block(input.data, output.data, count, type, reduction,
                                                   communicator_, request));
        },
        [=](std::int64_t) {
          if (op == ReduceOp::kAverage) {
            kernels::divide_on_host(output.data, output.type, output.numel, ranks);
          }
        });
    return work;
  }
  // Piece k reduces elements [k * piece, (k + 1) * piece) of every rank's
  // chunk, gathered (and widened, when 16-bit) into a float32 staging area,
  // into the same elements of the output (float32 directly, or through staging).
  const std::int64_t piece = reduce_scatter_piece(chunk);
  auto staging_in = std::shared_ptr<float[]>(new float[piece * ranks]);
  const bool output_is_float32 = output.type == ElementType::kFloat32;
  auto staging_out = std::shared_ptr<float[]>(output_is_float32 ? nullptr : new float[piece]);
  auto piece_length = [=](std::int64_t k) { return std::min(piece, chunk - k * piece); };
  work->run(
      pieces_for(chunk, piece),
      [=](std::int64_t k, MPI_Request* request) {
        const std::int64_t length = piece_length(k);
        for (int r = 0; r < ranks; ++r) {
          const TensorSpan source = input.slice(r * chunk + k * piece, length);
          kernels::cast_on_host(source.data, source.type, staging_in.get() + r * length,
                                ElementType::kFloat32, length);
        }
        float* reduced = output_is_float32
                             ? static_cast<float*>(output.slice(k * piece, length).data)
                             : staging_out.get();
        FSDP_MPI_CHECK(MPI_Ireduce_scatter_block(staging_in.get(), reduced,
                                                 static_cast<int>(length), MPI_FLOAT, reduction,
                                                 communicator_, request));
      },
      [=](std::int64_t k) {
        const std::int64_t length = piece_length(k);
        const TensorSpan destination = output.slice(k * piece, length);
        float* reduced =
            output_is_float32 ? static_cast<float*>(destination.data) : staging_out.get();
        if (op == ReduceOp::kAverage) {
          kernels::divide_on_host(reduced, ElementType::kFloat32, length, ranks);
        }
        if (!output_is_float32) {
          kernels::cast_on_host(reduced, ElementType::kFloat32, destination.data, destination.type,
                                length);
        }
      });
  return work;
}

ProcessGroup::Work MpiProcessGroup::start_all_reduce(TensorSpan buffer, ReduceOp op,
                                                     std::string description) {
  const int count = mpi_count(buffer.numel, description);
  auto work = std::make_unique<MpiWork>(*this, std::move(description));
  const int ranks = size();
  const MPI_Op reduction = mpi_op(op);
  if (!is_half_precision(buffer.type)) {
    const MPI_Datatype type = datatype_for_moving(buffer.type);
    work->run(
        1,
        [=](std::int64_t, MPI_Request* request) {
          FSDP_MPI_CHECK(MPI_Iallreduce(MPI_IN_PLACE, buffer.data, count, type, reduction,
                                        communicator_, request));
        },
        [=](std::int64_t) {
          if (op == ReduceOp::kAverage) {
            kernels::divide_on_host(buffer.data, buffer.type, buffer.numel, ranks);
          }
        });
    return work;
  }
  // 16-bit: contiguous pieces, each widened, reduced in float32 and rounded back once.
  const std::int64_t piece = std::max<std::int64_t>(1, std::min(buffer.numel, staging_elements_));
  auto staging = std::shared_ptr<float[]>(new float[piece]);
  auto piece_of = [=](std::int64_t k) {
    return buffer.slice(k * piece, std::min(piece, buffer.numel - k * piece));
  };
  work->run(
      pieces_for(buffer.numel, piece),
      [=](std::int64_t k, MPI_Request* request) {
        const TensorSpan part = piece_of(k);
        kernels::cast_on_host(part.data, part.type, staging.get(), ElementType::kFloat32,
                              part.numel);
        FSDP_MPI_CHECK(MPI_Iallreduce(MPI_IN_PLACE, staging.get(), static_cast<int>(part.numel),
                                      MPI_FLOAT, reduction, communicator_, request));
      },
      [=](std::int64_t k) {
        const TensorSpan part = piece_of(k);
        if (op == ReduceOp::kAverage) {
          kernels::divide_on_host(staging.get(), ElementType::kFloat32, part.numel, ranks);
        }
        kernels::cast_on_host(staging.get(), ElementType::kFloat32, part.data, part.type,
                              part.numel);
      });
  return work;
}

ProcessGroup::Work MpiProcessGroup::start_broadcast(TensorSpan buffer, int root,
                                                    std::string description) {
  const int count = mpi_count(buffer.numel, description);
  auto work = std::make_unique<MpiWork>(*this, std::move(description));
  const MPI_Datatype type = datatype_for_moving(buffer.type);
  work->run(1, [=](std::int64_t, MPI_Request* request) {
    FSDP_MPI_CHECK(MPI_Ibcast(buffer.data, count, type, root, communicator_, request));
  });
  return work;
}

ProcessGroup::Work MpiProcessGroup::start_barrier(std::string description) {
  auto work = std::make_unique<MpiWork>(*this, std::move(description));
  work->run(1, [this](std::int64_t, MPI_Request* request) {
    FSDP_MPI_CHECK(MPI_Ibarrier(communicator_, request));
  });
  return work;
}

}  // namespace fsdp
