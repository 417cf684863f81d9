#include "fsdp/checkpoint/hf_import.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <memory>

#include "fsdp/checkpoint/checkpoint_error.h"
#include "fsdp/checkpoint/element_conversion.h"
#include "fsdp/checkpoint/load_verification.h"
#include "fsdp/checkpoint/stage_group.h"
#include "fsdp/collective_errors.h"
#include "fsdp/torch_interop.h"

namespace fsdp::checkpoint {
namespace {

// Same-dtype runs at least this long are read straight into the shard; shorter
// ones go through the staging chunk, so that a tensor split into many short
// runs (concatenation along an inner dimension) is still read in large preads.
constexpr std::int64_t kDirectReadBytes = std::int64_t{64} << 10;
// Direct reads are split into preads of at most this size, small enough to
// stay in cache for the NaN check that follows each.
constexpr std::int64_t kScanBytes = std::int64_t{256} << 10;

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// Staging memory that is not touched (so not resident) until used.
class Staging {
 public:
  char* get(std::int64_t bytes) {
    if (bytes > capacity_) {
      memory_.reset(new char[static_cast<std::size_t>(bytes)]);
      capacity_ = bytes;
    }
    return memory_.get();
  }

 private:
  std::unique_ptr<char[]> memory_;
  std::int64_t capacity_ = 0;
};

// Writes converted elements into one stage's weight shard, on the host or
// through a host copy for a CUDA shard.
class ShardTarget {
 public:
  explicit ShardTarget(const at::Tensor& shard)
      : shard_(shard),
        type_(shard.scalar_type()),
        element_bytes_(static_cast<std::int64_t>(shard.element_size())),
        host_(shard.device().is_cpu()) {}

  void write(const void* source, SafetensorsDtype source_dtype, std::int64_t offset,
             std::int64_t count) {
    if (host_) {
      convert_elements(source, source_dtype,
                       static_cast<char*>(shard_.data_ptr()) + offset * element_bytes_, type_,
                       count);
      return;
    }
    auto converted = at::empty({count}, at::TensorOptions().dtype(type_));
    convert_elements(source, source_dtype, converted.data_ptr(), type_, count);
    shard_.narrow(0, offset, count).copy_(converted);
  }
  // Where element `offset` lives, for reading straight into it; null for a device shard.
  char* direct(std::int64_t offset) const {
    return host_ ? static_cast<char*>(shard_.data_ptr()) + offset * element_bytes_ : nullptr;
  }
  c10::ScalarType type() const { return type_; }

 private:
  at::Tensor shard_;
  c10::ScalarType type_;
  std::int64_t element_bytes_;
  bool host_;
};

// One piece's share of one rank's shard.
struct CopyTask {
  const ConversionPiece* piece;
  std::size_t stage_index;
  std::size_t parameter_index;
  ElementRange block;        // block-order interval of the piece to copy
  std::int64_t shard_begin;  // the rank's first flat index in the stage
};

template <typename Element>
void transpose_matrix(const char* source, char* destination, std::int64_t rows,
                      std::int64_t columns) {
  // source [rows, columns] -> destination [columns, rows]
  const auto* in = reinterpret_cast<const Element*>(source);
  auto* out = reinterpret_cast<Element*>(destination);
  for (std::int64_t r = 0; r < rows; ++r) {
    for (std::int64_t c = 0; c < columns; ++c) out[c * rows + r] = in[r * columns + c];
  }
}

void transpose_bytes(const char* source, char* destination, std::int64_t rows, std::int64_t columns,
                     std::int64_t element_bytes) {
  switch (element_bytes) {
    case 1:
      return transpose_matrix<std::uint8_t>(source, destination, rows, columns);
    case 2:
      return transpose_matrix<std::uint16_t>(source, destination, rows, columns);
    case 4:
      return transpose_matrix<std::uint32_t>(source, destination, rows, columns);
    default:
      return transpose_matrix<std::uint64_t>(source, destination, rows, columns);
  }
}

class Importer {
 public:
  Importer(const std::vector<Fsdp*>& stages, LoadVerification& verification,
           const ImportOptions& options)
      : verification_(verification), options_(options), start_(Clock::now()) {
    for (auto* stage : stages) targets_.emplace_back(stage->weight_shard());
  }

  void add(const CopyTask& task) {
    tasks_.push_back(task);
    const std::int64_t element_bytes = dtype_size(task.piece->source.entry->dtype);
    if (!task.piece->transposed) {
      progress_.bytes_total += task.block.size() * element_bytes;
      return;
    }
    // Transposes read whole block-order rows (copy_transposed).
    const auto& shape = task.piece->shape;
    const std::int64_t q_size = shape[shape.size() - 2];
    if (q_size == 0) return;
    const std::int64_t rows = (task.block.end + q_size - 1) / q_size - task.block.begin / q_size;
    progress_.bytes_total += rows * q_size * element_bytes;
  }

  void run() {
    for (const auto& task : tasks_) {
      if (task.piece->transposed) {
        copy_transposed(task);
      } else {
        copy_in_order(task);
      }
    }
    report_progress(true);
  }

 private:
  // Scatters block-order elements [first, last), held at `data` (which starts
  // at block-order element `data_first`), into the shard.
  void scatter(const CopyTask& task, const char* data, std::int64_t data_first, std::int64_t first,
               std::int64_t last) {
    const auto& piece = *task.piece;
    const auto dtype = piece.source.entry->dtype;
    const std::int64_t element_bytes = dtype_size(dtype);
    for (std::int64_t k = first; k < last;) {
      const std::int64_t end = std::min(last, (k / piece.run + 1) * piece.run);
      const std::int64_t shard_offset = piece.destination(k) - task.shard_begin;
      targets_[task.stage_index].write(data + (k - data_first) * element_bytes, dtype, shard_offset,
                                       end - k);
      verification_.record(task.stage_index, task.parameter_index, shard_offset, end - k);
      k = end;
    }
  }

  void copy_in_order(const CopyTask& task) {
    const auto& piece = *task.piece;
    const auto& file = *piece.source.file;
    const auto& entry = *piece.source.entry;
    const std::int64_t element_bytes = dtype_size(entry.dtype);
    auto& target = targets_[task.stage_index];
    const auto same_type = scalar_type_of(entry.dtype) == target.type();
    if (same_type && target.direct(0) != nullptr && piece.run * element_bytes >= kDirectReadBytes) {
      // At most kScanBytes per pread, so that the NaN check reads what was
      // just read from cache rather than from memory.
      const std::int64_t slice = std::max<std::int64_t>(1, kScanBytes / element_bytes);
      for (std::int64_t k = task.block.begin; k < task.block.end;) {
        const std::int64_t end =
            std::min({task.block.end, (k / piece.run + 1) * piece.run, k + slice});
        const std::int64_t shard_offset = piece.destination(k) - task.shard_begin;
        char* destination = target.direct(shard_offset);
        file.read_tensor_bytes(entry, k * element_bytes, destination, (end - k) * element_bytes);
        check_values(task, destination, end - k);
        verification_.record(task.stage_index, task.parameter_index, shard_offset, end - k);
        advance((end - k) * element_bytes);
        k = end;
      }
      return;
    }
    const std::int64_t chunk = std::max<std::int64_t>(1, options_.chunk_bytes / element_bytes);
    for (std::int64_t first = task.block.begin; first < task.block.end; first += chunk) {
      const std::int64_t last = std::min(task.block.end, first + chunk);
      char* data = staging_.get((last - first) * element_bytes);
      file.read_tensor_bytes(entry, first * element_bytes, data, (last - first) * element_bytes);
      check_values(task, data, last - first);
      scatter(task, data, first, first, last);
      advance((last - first) * element_bytes);
    }
  }

  // Stored [..., Q, P], block order [..., P, Q]: block-order row R (of Q
  // elements) is stored column R mod P of matrix R / P. Reads whole rows of
  // block order, a few at a time, as Q short reads (one read when all P fit).
  void copy_transposed(const CopyTask& task) {
    const auto& piece = *task.piece;
    const auto& file = *piece.source.file;
    const auto& entry = *piece.source.entry;
    const std::int64_t element_bytes = dtype_size(entry.dtype);
    const std::int64_t q_size = piece.shape[piece.shape.size() - 2];
    const std::int64_t p_size = piece.shape[piece.shape.size() - 1];
    if (q_size == 0 || p_size == 0) return;
    const std::int64_t rows_per_chunk =
        std::max<std::int64_t>(1, options_.chunk_bytes / (q_size * element_bytes));
    std::int64_t row = task.block.begin / q_size;
    const std::int64_t end_row = (task.block.end + q_size - 1) / q_size;
    while (row < end_row) {
      const std::int64_t matrix = row / p_size, p_first = row % p_size;
      const std::int64_t p_count = std::min({rows_per_chunk, p_size - p_first, end_row - row});
      char* stored = staging_.get(2 * q_size * p_count * element_bytes);
      char* block_order = stored + q_size * p_count * element_bytes;
      const std::int64_t matrix_offset = matrix * p_size * q_size;
      if (p_count == p_size) {
        file.read_tensor_bytes(entry, matrix_offset * element_bytes, stored,
                               q_size * p_size * element_bytes);
      } else {
        for (std::int64_t q = 0; q < q_size; ++q) {
          file.read_tensor_bytes(entry, (matrix_offset + q * p_size + p_first) * element_bytes,
                                 stored + q * p_count * element_bytes, p_count * element_bytes);
        }
      }
      check_values(task, stored, q_size * p_count);
      transpose_bytes(stored, block_order, q_size, p_count, element_bytes);
      const std::int64_t data_first = row * q_size;
      scatter(task, block_order, data_first, std::max(task.block.begin, data_first),
              std::min(task.block.end, data_first + p_count * q_size));
      advance(q_size * p_count * element_bytes);
      row += p_count;
    }
  }

  // Rejects NaN in `count` elements of the piece's source just read to `data`.
  void check_values(const CopyTask& task, const char* data, std::int64_t count) const {
    if (!options_.reject_nan) return;
    const auto& piece = *task.piece;
    const auto nans = count_nan(data, piece.source.entry->dtype, count);
    if (nans == 0) return;
    throw CheckpointError(piece.source.file->path() + ": tensor \"" + piece.key + "\" holds NaN (" +
                          std::to_string(nans) + " in the part loaded into parameter \"" +
                          piece.parameter + "\" by this rank)");
  }

  void advance(std::int64_t bytes) {
    progress_.bytes_done += bytes;
    report_progress(false);
  }

  void report_progress(bool final) {
    if (!options_.progress) return;
    const double now = seconds_since(start_);
    if (!final && now - last_report_ < options_.progress_interval_seconds) return;
    last_report_ = now;
    progress_.seconds = now;
    options_.progress(progress_);
  }

  LoadVerification& verification_;
  const ImportOptions& options_;
  std::vector<ShardTarget> targets_;
  std::vector<CopyTask> tasks_;
  Staging staging_;
  LoadProgress progress_;
  Clock::time_point start_;
  double last_report_ = 0;
};

}  // namespace

LoadReport import_hf_checkpoint(const std::filesystem::path& path, const ConversionRules& rules,
                                const std::vector<Fsdp*>& stages, const ImportOptions& options) {
  const auto start = Clock::now();
  auto& group = common_group(stages);
  std::unique_ptr<HfCheckpoint> checkpoint;
  std::unique_ptr<LoadVerification> verification;
  std::string source = path.string();
  try {
    run_agreeing_on_failure(group, [&] {
      checkpoint = std::make_unique<HfCheckpoint>(path);
      source = checkpoint->source();
      std::vector<const FlatLayout*> layouts;
      for (const auto* stage : stages) layouts.push_back(&stage->layout());
      const auto plans = plan_import(layouts, *checkpoint, rules);
      verification = std::make_unique<LoadVerification>(stages);
      Importer importer(stages, *verification, options);
      for (std::size_t s = 0; s < stages.size(); ++s) {
        const auto& layout = stages[s]->layout();
        const auto owned = layout.shard_range(group.rank());
        for (std::size_t p = 0; p < layout.parameters().size(); ++p) {
          const auto& slot = layout.parameters()[p];
          const auto range = intersect(owned, slot.flat_range);
          if (range.empty()) continue;
          for (const auto& piece : plans.at(slot.name).pieces) {
            const auto block = piece.block_interval(range);
            if (!block.empty()) importer.add({&piece, s, p, block, owned.begin});
          }
        }
      }
      importer.run();
      verification->verify_local(source);
    });
    verification->verify_global(source);
  } catch (...) {
    if (verification) verification->poison();
    throw;
  }

  LoadReport report;
  report.bytes_read = checkpoint->bytes_read();
  report.checkpoint_bytes = checkpoint->tensor_bytes();
  auto total = on_group_device(at::full({1}, report.bytes_read, at::kLong), group);
  group.all_reduce(span_of(total), ReduceOp::kSum);
  report.bytes_read_all_ranks = total.cpu().item<std::int64_t>();
  report.seconds = seconds_since(start);
  return report;
}

}  // namespace fsdp::checkpoint
