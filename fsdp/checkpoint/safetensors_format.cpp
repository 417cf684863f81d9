#include "fsdp/checkpoint/safetensors_format.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <array>
#include <set>
#include <sstream>

#include "fsdp/checkpoint/checkpoint_error.h"
#include "fsdp/checkpoint/json_input.h"

namespace fsdp::checkpoint {
namespace {

struct DtypeInfo {
  SafetensorsDtype dtype;
  std::string_view name;
  std::int64_t size;
  bool floating;
};

constexpr std::array<DtypeInfo, 15> kDtypes{{
    {SafetensorsDtype::kBool, "BOOL", 1, false},
    {SafetensorsDtype::kUInt8, "U8", 1, false},
    {SafetensorsDtype::kInt8, "I8", 1, false},
    {SafetensorsDtype::kFloat8E5M2, "F8_E5M2", 1, true},
    {SafetensorsDtype::kFloat8E4M3, "F8_E4M3", 1, true},
    {SafetensorsDtype::kInt16, "I16", 2, false},
    {SafetensorsDtype::kUInt16, "U16", 2, false},
    {SafetensorsDtype::kFloat16, "F16", 2, true},
    {SafetensorsDtype::kBFloat16, "BF16", 2, true},
    {SafetensorsDtype::kInt32, "I32", 4, false},
    {SafetensorsDtype::kUInt32, "U32", 4, false},
    {SafetensorsDtype::kFloat32, "F32", 4, true},
    {SafetensorsDtype::kFloat64, "F64", 8, true},
    {SafetensorsDtype::kInt64, "I64", 8, false},
    {SafetensorsDtype::kUInt64, "U64", 8, false},
}};

const DtypeInfo& info(SafetensorsDtype dtype) {
  return kDtypes.at(static_cast<std::size_t>(dtype));
}

[[noreturn]] void fail(const std::string& file, const std::string& message) {
  throw CheckpointError(file + ": " + message);
}

std::int64_t checked_multiply(std::int64_t a, std::int64_t b, const std::string& file,
                              const std::string& key) {
  std::int64_t product = 0;
  if (__builtin_mul_overflow(a, b, &product)) {
    fail(file, "tensor \"" + key + "\": its size in bytes overflows 64 bits");
  }
  return product;
}

std::int64_t non_negative_integer(const nlohmann::json& value, const std::string& file,
                                  const std::string& key, const char* field) {
  if (value.is_number_unsigned()) {
    const auto number = value.get<std::uint64_t>();
    if (number > static_cast<std::uint64_t>(INT64_MAX)) {
      fail(file, "tensor \"" + key + "\": " + field + " value " + std::to_string(number) +
                     " is too large");
    }
    return static_cast<std::int64_t>(number);
  }
  fail(file, "tensor \"" + key + "\": " + field + " must hold non-negative integers, found " +
                 json_excerpt(value));
}

TensorEntry parse_entry(const std::string& key, const nlohmann::json& value,
                        const std::string& file) {
  if (!value.is_object()) {
    fail(file, "tensor \"" + key + "\": expected an object, found " + json_excerpt(value));
  }
  TensorEntry entry;
  entry.name = key;
  const auto dtype = value.find("dtype");
  if (dtype == value.end() || !dtype->is_string()) {
    fail(file, "tensor \"" + key + "\": missing or non-string \"dtype\"");
  }
  const auto parsed = parse_dtype(dtype->get_ref<const std::string&>());
  if (!parsed) {
    fail(file, "tensor \"" + key + "\": unknown dtype \"" + dtype->get<std::string>() +
                   "\" (known: " + known_dtype_names() + ")");
  }
  entry.dtype = *parsed;
  const auto shape = value.find("shape");
  if (shape == value.end() || !shape->is_array()) {
    fail(file, "tensor \"" + key + "\": missing or non-array \"shape\"");
  }
  for (const auto& dimension : *shape) {
    entry.shape.push_back(non_negative_integer(dimension, file, key, "shape"));
  }
  const auto offsets = value.find("data_offsets");
  if (offsets == value.end() || !offsets->is_array() || offsets->size() != 2) {
    fail(file, "tensor \"" + key + "\": \"data_offsets\" must be [begin, end]");
  }
  entry.begin = non_negative_integer((*offsets)[0], file, key, "data_offsets");
  entry.end = non_negative_integer((*offsets)[1], file, key, "data_offsets");
  if (entry.end < entry.begin) {
    fail(file, "tensor \"" + key + "\": data_offsets end " + std::to_string(entry.end) +
                   " is before begin " + std::to_string(entry.begin));
  }
  std::int64_t expected = dtype_size(entry.dtype);
  for (const auto dimension : entry.shape)
    expected = checked_multiply(expected, dimension, file, key);
  if (expected != entry.bytes()) {
    fail(file, "tensor \"" + key + "\": shape " + format_shape(entry.shape) + " of " +
                   std::string(dtype_name(entry.dtype)) + " needs " + std::to_string(expected) +
                   " bytes, but data_offsets [" + std::to_string(entry.begin) + ", " +
                   std::to_string(entry.end) + "] hold " + std::to_string(entry.bytes()));
  }
  return entry;
}

}  // namespace

std::string_view dtype_name(SafetensorsDtype dtype) { return info(dtype).name; }
std::int64_t dtype_size(SafetensorsDtype dtype) { return info(dtype).size; }
bool is_floating_point(SafetensorsDtype dtype) { return info(dtype).floating; }

std::optional<SafetensorsDtype> parse_dtype(std::string_view name) {
  for (const auto& candidate : kDtypes) {
    if (candidate.name == name) return candidate.dtype;
  }
  return std::nullopt;
}

std::string known_dtype_names() {
  std::string names;
  for (const auto& candidate : kDtypes) {
    if (!names.empty()) names += ", ";
    names += candidate.name;
  }
  return names;
}

std::int64_t TensorEntry::numel() const {
  std::int64_t count = 1;
  for (const auto dimension : shape) count *= dimension;  // validated by parse_header
  return count;
}

const TensorEntry* SafetensorsHeader::find(std::string_view name) const {
  for (const auto& tensor : tensors) {
    if (tensor.name == name) return &tensor;
  }
  return nullptr;
}

std::string format_shape(const std::vector<std::int64_t>& shape) {
  std::string text = "[";
  for (std::size_t i = 0; i < shape.size(); ++i) {
    if (i > 0) text += ", ";
    text += std::to_string(shape[i]);
  }
  return text + "]";
}

std::int64_t header_length_field(const unsigned char (&length_bytes)[kHeaderLengthBytes],
                                 std::int64_t file_size, const std::string& file) {
  std::uint64_t header_length = 0;
  for (int i = kHeaderLengthBytes - 1; i >= 0; --i) {
    header_length = (header_length << 8) | length_bytes[i];
  }
  if (header_length > kMaxHeaderBytes) {
    throw CheckpointError(file + ": its header length field exceeds the limit of " +
                          std::to_string(kMaxHeaderBytes) +
                          " bytes (not a safetensors file, or corrupt)");
  }
  const auto available = static_cast<std::uint64_t>(file_size - kHeaderLengthBytes);
  if (header_length > available) {
    throw CheckpointError(file + ": header length " + std::to_string(header_length) +
                          " runs beyond the end of the file (" + std::to_string(available) +
                          " bytes after the length field): truncated file");
  }
  return static_cast<std::int64_t>(header_length);
}

SafetensorsHeader parse_header(std::string_view json_text, std::int64_t data_bytes,
                               const std::string& file) {
  // Duplicate keys would silently keep the last one in nlohmann's parser; the
  // callback sees every top-level key first.
  std::set<std::string> seen_keys;
  std::string duplicate;
  const nlohmann::json::parser_callback_t callback =
      [&](int depth, nlohmann::json::parse_event_t event, nlohmann::json& parsed) {
        // Bounded, so that nothing recursing over the value (printing it in
        // a message) can exhaust the stack: real headers nest 3 levels.
        if (depth > kMaxJsonDepth) {
          fail(file, "the header nests deeper than " + std::to_string(kMaxJsonDepth) + " levels");
        }
        if (event == nlohmann::json::parse_event_t::key && depth == 1 && duplicate.empty()) {
          const auto& key = parsed.get_ref<const std::string&>();
          if (!seen_keys.insert(key).second) duplicate = key;
        }
        return true;
      };
  // nlohmann's lexer ends the input at a NUL byte and would accept "{}\0junk";
  // the reference reader parses the whole header, in which no NUL can stand.
  if (const auto nul = json_text.find('\0'); nul != std::string_view::npos) {
    fail(file, "the header is not valid UTF-8 JSON: a NUL byte at offset " + std::to_string(nul) +
                   " of " + std::to_string(json_text.size()));
  }
  nlohmann::json root;
  try {
    root = nlohmann::json::parse(json_text.begin(), json_text.end(), callback);
  } catch (const nlohmann::json::exception& error) {
    fail(file, "the header is not valid UTF-8 JSON: " + json_error_excerpt(error.what()));
  }
  if (!duplicate.empty()) fail(file, "the header names tensor \"" + duplicate + "\" twice");
  if (!root.is_object())
    fail(file, std::string("the header must be a JSON object, found ") + root.type_name());

  SafetensorsHeader header;
  header.header_bytes = static_cast<std::int64_t>(json_text.size());
  for (const auto& [key, value] : root.items()) {
    if (key == kMetadataKey) {
      if (!value.is_object()) fail(file, "\"__metadata__\" must be an object of strings");
      for (const auto& [metadata_key, metadata_value] : value.items()) {
        if (!metadata_value.is_string()) {
          fail(file, "\"__metadata__\" entry \"" + metadata_key + "\" must be a string, found " +
                         json_excerpt(metadata_value));
        }
        header.metadata[metadata_key] = metadata_value.get<std::string>();
      }
      continue;
    }
    header.tensors.push_back(parse_entry(key, value, file));
  }
  std::sort(header.tensors.begin(), header.tensors.end(),
            [](const TensorEntry& a, const TensorEntry& b) {
              return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
            });
  std::int64_t expected_begin = 0;
  const TensorEntry* previous = nullptr;
  for (const auto& tensor : header.tensors) {
    if (tensor.begin != expected_begin) {
      const std::string after =
          previous ? "after tensor \"" + previous->name + "\"" : "at the start";
      fail(file, std::string(tensor.begin < expected_begin ? "overlapping" : "gap between") +
                     " tensor data " + after + ": tensor \"" + tensor.name + "\" begins at byte " +
                     std::to_string(tensor.begin) + " of the data area, expected " +
                     std::to_string(expected_begin));
    }
    expected_begin = tensor.end;
    previous = &tensor;
  }
  if (expected_begin != data_bytes) {
    if (expected_begin > data_bytes) {
      fail(file, "truncated: tensor \"" + previous->name + "\" ends at byte " +
                     std::to_string(expected_begin) + " of the data area, but the file holds " +
                     std::to_string(data_bytes) + " data bytes");
    }
    fail(file, std::to_string(data_bytes - expected_begin) +
                   " trailing bytes after the last tensor" +
                   (previous ? " (\"" + previous->name + "\")" : std::string()) +
                   ": the data area should end at byte " + std::to_string(expected_begin));
  }
  return header;
}

std::string serialize_header(const std::vector<TensorDeclaration>& tensors,
                             const std::map<std::string, std::string>& metadata,
                             std::vector<TensorEntry>* entries) {
  std::vector<const TensorDeclaration*> order;
  std::set<std::string> names;
  for (const auto& tensor : tensors) {
    if (tensor.name.empty() || tensor.name == kMetadataKey) {
      throw CheckpointError("safetensors writer: invalid tensor name \"" + tensor.name + "\"");
    }
    if (!names.insert(tensor.name).second) {
      throw CheckpointError("safetensors writer: tensor \"" + tensor.name + "\" declared twice");
    }
    for (const auto dimension : tensor.shape) {
      if (dimension < 0) {
        throw CheckpointError("safetensors writer: tensor \"" + tensor.name +
                              "\" has a negative dimension in " + format_shape(tensor.shape));
      }
    }
    order.push_back(&tensor);
  }
  std::stable_sort(order.begin(), order.end(), [](const auto* a, const auto* b) {
    const auto size_a = dtype_size(a->dtype), size_b = dtype_size(b->dtype);
    return size_a != size_b ? size_a > size_b : a->name < b->name;
  });
  nlohmann::ordered_json root = nlohmann::ordered_json::object();
  if (!metadata.empty()) root[std::string(kMetadataKey)] = metadata;
  entries->clear();
  std::int64_t offset = 0;
  for (const auto* tensor : order) {
    TensorEntry entry{tensor->name, tensor->dtype, tensor->shape, offset, 0};
    entry.end = offset + entry.numel() * dtype_size(tensor->dtype);
    root[tensor->name] = {{"dtype", std::string(dtype_name(tensor->dtype))},
                          {"shape", tensor->shape},
                          {"data_offsets", {entry.begin, entry.end}}};
    offset = entry.end;
    entries->push_back(std::move(entry));
  }
  std::string json_text = root.dump();
  json_text.append((kHeaderAlignment - json_text.size() % kHeaderAlignment) % kHeaderAlignment,
                   ' ');
  std::string header(kHeaderLengthBytes, '\0');
  std::uint64_t length = json_text.size();
  for (int i = 0; i < 8; ++i) header[i] = static_cast<char>((length >> (8 * i)) & 0xff);
  return header + json_text;
}

}  // namespace fsdp::checkpoint
