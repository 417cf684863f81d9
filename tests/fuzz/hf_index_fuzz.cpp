// libFuzzer target: the text of an HF model.safetensors.index.json
// (parse_hf_weight_map), and every file name it maps to, as HfCheckpoint
// checks them (file_inside) before opening anything. Every input must end in
// a weight map or a CheckpointError; anything else is a finding.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "fsdp/checkpoint/checkpoint_error.h"
#include "fsdp/checkpoint/file_io.h"
#include "fsdp/checkpoint/hf_checkpoint.h"

using namespace fsdp::checkpoint;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  try {
    const auto weight_map = parse_hf_weight_map(text, "model.safetensors.index.json");
    for (const auto& [file_name, keys] : weight_map) {
      if (keys.empty()) __builtin_trap();
      try {
        const auto path = file_inside("/nonexistent/fuzz-hf", file_name, "weight_map entry",
                                      /*hf_cache_layout=*/true);
        // An accepted name is a plain name inside the directory.
        if (path.parent_path() != "/nonexistent/fuzz-hf") __builtin_trap();
      } catch (const CheckpointError&) {
      }
    }
  } catch (const CheckpointError&) {
  }
  return 0;
}
