// The safetensors format, as a spec mirrored by named constants, and its
// header: parsing with the reference implementation's validation, and writing.
//
//   bytes [0, 8)         N, the header length, unsigned 64-bit little-endian
//   bytes [8, 8 + N)     the header: UTF-8 JSON, one object
//                        { "__metadata__": {string: string},            (optional)
//                          "<name>": {"dtype": "F32", "shape": [2, 3],
//                                     "data_offsets": [begin, end]}, ... }
//   bytes [8 + N, end)   the data area; a tensor's bytes are [8 + N + begin, 8 + N + end),
//                        row-major, little-endian
//
// A valid header (the reference reader's rules, docs/DESIGN.md): N >= 2 and at
// most kMaxHeaderBytes; valid UTF-8 JSON with no duplicate keys; known dtypes;
// shape x element size == end - begin, overflow-checked; sorted by offset, the
// tensors tile the data area exactly (no gap, no overlap), and the data area
// ends exactly where the last tensor does. Nothing here assumes alignment.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace fsdp::checkpoint {

inline constexpr std::int64_t kHeaderLengthBytes = 8;
inline constexpr std::uint64_t kMaxHeaderBytes = 100'000'000;
inline constexpr std::string_view kMetadataKey = "__metadata__";
// The writer pads the header with spaces to a multiple of this, as the reference writer does.
inline constexpr std::int64_t kHeaderAlignment = 8;

enum class SafetensorsDtype : std::uint8_t {
  kBool,
  kUInt8,
  kInt8,
  kFloat8E5M2,
  kFloat8E4M3,  // torch.float8_e4m3fn
  kInt16,
  kUInt16,
  kFloat16,
  kBFloat16,
  kInt32,
  kUInt32,
  kFloat32,
  kFloat64,
  kInt64,
  kUInt64,
};

// "F32", "BF16", ... as written in headers.
std::string_view dtype_name(SafetensorsDtype dtype);
std::optional<SafetensorsDtype> parse_dtype(std::string_view name);
std::int64_t dtype_size(SafetensorsDtype dtype);
bool is_floating_point(SafetensorsDtype dtype);
// Every name parse_dtype() accepts, for messages: "BOOL, U8, ...".
std::string known_dtype_names();

struct TensorEntry {
  std::string name;
  SafetensorsDtype dtype = SafetensorsDtype::kFloat32;
  std::vector<std::int64_t> shape;
  std::int64_t begin = 0;  // byte offsets relative to the data area
  std::int64_t end = 0;

  std::int64_t numel() const;
  std::int64_t bytes() const { return end - begin; }
};

struct SafetensorsHeader {
  std::vector<TensorEntry> tensors;  // sorted by begin offset
  std::map<std::string, std::string> metadata;
  std::int64_t header_bytes = 0;  // N
  std::int64_t data_offset() const { return kHeaderLengthBytes + header_bytes; }

  // The tensor named `name`, or null.
  const TensorEntry* find(std::string_view name) const;
};

// Validates `json_text` (the N header bytes) for a data area of `data_bytes`.
// Throws CheckpointError starting with `file` (the path, for messages) and
// naming the offending key on any violation of the rules above.
SafetensorsHeader parse_header(std::string_view json_text, std::int64_t data_bytes,
                               const std::string& file);

// N, the header length, from a file's first 8 bytes, checked against the
// file's size: at most kMaxHeaderBytes and not beyond the end. Throws
// CheckpointError naming `file` otherwise; a value over the limit is never
// printed (from a file that is not safetensors it is 8 bytes of its content,
// "root:x:0" for /etc/passwd).
// REQUIRES: file_size >= kHeaderLengthBytes.
std::int64_t header_length_field(const unsigned char (&length_bytes)[kHeaderLengthBytes],
                                 std::int64_t file_size, const std::string& file);

// "[2, 3]", for messages.
std::string format_shape(const std::vector<std::int64_t>& shape);

// What a writer declares before writing any data.
struct TensorDeclaration {
  std::string name;
  SafetensorsDtype dtype = SafetensorsDtype::kFloat32;
  std::vector<std::int64_t> shape;
};

// Lays `tensors` out as the reference writer does (larger elements first, then
// by name: each tensor starts aligned to its element size) and returns the
// complete header: the 8 length bytes followed by the JSON padded with spaces
// to a multiple of kHeaderAlignment. `entries` receives the tensors in data
// order with their offsets. Throws CheckpointError for a duplicate or empty
// name, a name equal to __metadata__, or a negative dimension.
std::string serialize_header(const std::vector<TensorDeclaration>& tensors,
                             const std::map<std::string, std::string>& metadata,
                             std::vector<TensorEntry>* entries);

}  // namespace fsdp::checkpoint
