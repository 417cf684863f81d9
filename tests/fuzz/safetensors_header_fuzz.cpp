// libFuzzer target: a whole safetensors file image, as SafetensorsFile reads
// one (the 8-byte length, the JSON header, the data area). Every input must
// end in a parsed header or a CheckpointError; anything else (a crash, a
// sanitizer report, another exception type) is a finding.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string_view>

#include "fsdp/checkpoint/checkpoint_error.h"
#include "fsdp/checkpoint/safetensors_format.h"

using namespace fsdp::checkpoint;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const auto file_size = static_cast<std::int64_t>(size);
  if (file_size < kHeaderLengthBytes) return 0;  // refused before any parsing
  unsigned char length_bytes[kHeaderLengthBytes];
  std::memcpy(length_bytes, data, sizeof length_bytes);
  try {
    const std::int64_t header_bytes = header_length_field(length_bytes, file_size, "fuzz");
    const std::string_view text(reinterpret_cast<const char*>(data) + kHeaderLengthBytes,
                                static_cast<std::size_t>(header_bytes));
    const auto header =
        parse_header(text, file_size - kHeaderLengthBytes - header_bytes, "fuzz.safetensors");
    // What a valid header promises its readers.
    std::int64_t end = 0;
    for (const auto& tensor : header.tensors) {
      if (tensor.begin != end || tensor.numel() * dtype_size(tensor.dtype) != tensor.bytes() ||
          header.find(tensor.name) != &tensor) {
        __builtin_trap();
      }
      end = tensor.end;
      (void)format_shape(tensor.shape);
    }
    if (end != file_size - header.data_offset()) __builtin_trap();
  } catch (const CheckpointError&) {
  }
  return 0;
}
