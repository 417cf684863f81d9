// libFuzzer target: the text of a distributed checkpoint's index.json
// (parse_checkpoint_index). Every input must end in an index that keeps the
// promises below or in a CheckpointError; anything else is a finding.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "fsdp/checkpoint/checkpoint_error.h"
#include "fsdp/checkpoint/checkpoint_index.h"

using namespace fsdp::checkpoint;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  try {
    const auto index = parse_checkpoint_index(text, "/nonexistent/fuzz-checkpoint", "index.json");
    if (index.world_size < 1 || static_cast<int>(index.files.size()) != index.world_size) {
      __builtin_trap();
    }
    for (std::size_t r = 0; r < index.files.size(); ++r) {
      const auto& file = index.files[r];
      if (file.rank != static_cast<int>(r) ||
          file.name != rank_file_name(file.rank, index.world_size) ||
          file.checksum_block_bytes < 1 || file.bytes < 0 ||
          static_cast<std::int64_t>(file.checksums.size()) !=
              (file.bytes + file.checksum_block_bytes - 1) / file.checksum_block_bytes) {
        __builtin_trap();
      }
    }
    for (const auto& stage : index.stages) {
      if (stage.parameters.size() != stage.flat_ranges.size()) __builtin_trap();
      for (const auto& range : stage.flat_ranges) {
        if (range.begin < 0 || range.begin > range.end || range.end > stage.unpadded_numel) {
          __builtin_trap();
        }
      }
    }
  } catch (const CheckpointError&) {
  }
  return 0;
}
