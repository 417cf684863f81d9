#include "fsdp/launch/inspect/placements_view.h"

#include <sstream>

#include "fsdp/checkpoint/safetensors_format.h"

namespace fsdp::inspect {
namespace {

std::string range_text(std::int64_t begin, std::int64_t end) {
  return "[" + std::to_string(begin) + ", " + std::to_string(end) + ")";
}

nlohmann::json range_json(std::int64_t begin, std::int64_t end) { return {begin, end}; }

}  // namespace

WhereReport where(TensorSource& source, std::string_view name) {
  const std::size_t index = source.find(name);
  WhereReport report;
  report.tensor = source.tensors()[index];
  if (auto* reader = source.distributed()) {
    report.world_size = reader->index().world_size;
    report.ranks = reader->placements(reader->find(name));
  } else {
    const auto& located = *source.hf()->find(name);
    const std::int64_t data = located.file->header().data_offset();
    report.hf =
        HfPlacement{located.file->path(), data + located.entry->begin, data + located.entry->end};
  }
  return report;
}

std::string where_text(const WhereReport& report) {
  std::ostringstream out;
  const auto& tensor = report.tensor;
  out << tensor.name << ": " << checkpoint::format_shape(tensor.shape) << " " << tensor.dtype;
  if (tensor.declared_dtype != tensor.dtype) out << " (declared " << tensor.declared_dtype << ")";
  out << ", " << tensor.numel << " elements\n";
  if (report.hf) {
    out << "  file " << report.hf->file << ", bytes "
        << range_text(report.hf->file_begin, report.hf->file_end) << "\n";
    return out.str();
  }
  const auto& placements = *report.ranks;
  const std::int64_t padded = placements.shard_numel * report.world_size;
  out << "  stage " << placements.stage << ": flat elements "
      << range_text(placements.flat_range.begin, placements.flat_range.end) << " of "
      << placements.stage_unpadded_numel << " (+" << padded - placements.stage_unpadded_numel
      << " padding), shards of " << placements.shard_numel << " elements x " << report.world_size
      << " ranks\n";
  if (placements.pieces.empty()) out << "  (no elements: no rank holds any of it)\n";
  for (const auto& piece : placements.pieces) {
    out << "  rank " << piece.rank << " (" << piece.file << "): elements "
        << range_text(piece.parameter_range.begin, piece.parameter_range.end)
        << " at shard offsets " << range_text(piece.shard_range.begin, piece.shard_range.end)
        << ", file bytes " << range_text(piece.file_begin, piece.file_end) << "\n";
  }
  for (const auto& padding : placements.padding) {
    out << "  rank " << padding.rank << " padding: shard offsets "
        << range_text(padding.shard_range.begin, padding.shard_range.end) << ", file bytes "
        << range_text(padding.file_begin, padding.file_end) << "\n";
  }
  return out.str();
}

nlohmann::json where_json(const WhereReport& report) {
  const auto& tensor = report.tensor;
  nlohmann::json document = {{"name", tensor.name},
                             {"shape", tensor.shape},
                             {"numel", tensor.numel},
                             {"dtype", tensor.dtype},
                             {"declared_dtype", tensor.declared_dtype}};
  if (report.hf) {
    document["kind"] = "hf";
    document["file"] = report.hf->file;
    document["file_bytes"] = range_json(report.hf->file_begin, report.hf->file_end);
    return document;
  }
  const auto& placements = *report.ranks;
  document["kind"] = "distributed";
  document["stage"] = placements.stage;
  document["world_size"] = report.world_size;
  document["flat_range"] = range_json(placements.flat_range.begin, placements.flat_range.end);
  document["shard_numel"] = placements.shard_numel;
  document["stage_unpadded_numel"] = placements.stage_unpadded_numel;
  auto pieces = nlohmann::json::array();
  for (const auto& piece : placements.pieces) {
    pieces.push_back(
        {{"rank", piece.rank},
         {"file", piece.file},
         {"parameter_range", range_json(piece.parameter_range.begin, piece.parameter_range.end)},
         {"shard_range", range_json(piece.shard_range.begin, piece.shard_range.end)},
         {"file_bytes", range_json(piece.file_begin, piece.file_end)}});
  }
  document["pieces"] = pieces;
  auto padding = nlohmann::json::array();
  for (const auto& entry : placements.padding) {
    padding.push_back({{"rank", entry.rank},
                       {"shard_range", range_json(entry.shard_range.begin, entry.shard_range.end)},
                       {"file_bytes", range_json(entry.file_begin, entry.file_end)}});
  }
  document["padding"] = padding;
  return document;
}

}  // namespace fsdp::inspect
