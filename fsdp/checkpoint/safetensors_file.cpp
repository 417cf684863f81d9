#include "fsdp/checkpoint/safetensors_file.h"

#include <stdexcept>

#include "fsdp/checkpoint/checkpoint_error.h"

namespace fsdp::checkpoint {

SafetensorsFile::SafetensorsFile(const std::filesystem::path& path, const HeaderReader& read_header)
    : file_(File::open_for_reading(path)), file_size_(file_.size()) {
  const std::string name = path.string();
  if (file_size_ < kHeaderLengthBytes) {
    throw CheckpointError(name + ": " + std::to_string(file_size_) +
                          " bytes is too short for a safetensors file (the header length "
                          "alone takes 8)");
  }
  unsigned char length_bytes[kHeaderLengthBytes];
  file_.read_exactly(0, length_bytes, kHeaderLengthBytes);
  const std::int64_t header_length = header_length_field(length_bytes, file_size_, name);
  const std::int64_t header_end = kHeaderLengthBytes + header_length;
  std::string json_text;
  if (read_header) {
    json_text = read_header(file_, header_end);
  } else {
    json_text.resize(static_cast<std::size_t>(header_length));
    file_.read_exactly(kHeaderLengthBytes, json_text.data(), header_length);
  }
  bytes_read_ = header_end;
  header_ = parse_header(json_text, file_size_ - header_end, name);
}

const TensorEntry& SafetensorsFile::tensor(std::string_view name) const {
  if (const auto* entry = header_.find(name)) return *entry;
  throw CheckpointError(path() + ": no tensor \"" + std::string(name) + "\"");
}

void SafetensorsFile::read_tensor_bytes(const TensorEntry& tensor, std::int64_t byte_offset,
                                        void* destination, std::int64_t bytes) const {
  if (byte_offset < 0 || bytes < 0 || byte_offset + bytes > tensor.bytes()) {
    throw std::out_of_range(path() + ": bytes [" + std::to_string(byte_offset) + ", " +
                            std::to_string(byte_offset + bytes) + ") are outside tensor \"" +
                            tensor.name + "\" (" + std::to_string(tensor.bytes()) + " bytes)");
  }
  read_file_bytes(header_.data_offset() + tensor.begin + byte_offset, destination, bytes);
}

void SafetensorsFile::read_file_bytes(std::int64_t offset, void* destination,
                                      std::int64_t bytes) const {
  file_.read_exactly(offset, destination, bytes);
  bytes_read_ += bytes;
}

SafetensorsWriter::SafetensorsWriter(const std::filesystem::path& path,
                                     std::vector<TensorDeclaration> tensors,
                                     std::map<std::string, std::string> metadata,
                                     std::int64_t checksum_block_bytes)
    : file_(File::create(path)), checksummer_(checksum_block_bytes) {
  const std::string header = serialize_header(tensors, metadata, &entries_);
  header_bytes_ = static_cast<std::int64_t>(header.size());
  data_bytes_ = entries_.empty() ? 0 : entries_.back().end;
  file_.append(header.data(), header_bytes_);
  checksummer_.update(header.data(), header_bytes_);
}

void SafetensorsWriter::append(const void* data, std::int64_t bytes) {
  if (bytes > data_bytes_ - written_) {
    throw CheckpointError(
        file_.path().string() + ": " + std::to_string(bytes) + " more bytes appended, but only " +
        std::to_string(data_bytes_ - written_) + " remain of the declared tensors");
  }
  file_.append(data, bytes);
  checksummer_.update(data, bytes);
  written_ += bytes;
}

std::string SafetensorsWriter::next_tensor() const {
  for (const auto& entry : entries_) {
    if (written_ < entry.end) return entry.name;
  }
  return {};
}

void SafetensorsWriter::finish() {
  if (written_ != data_bytes_) {
    throw CheckpointError(file_.path().string() + ": tensor \"" + next_tensor() +
                          "\" was not completely written (" +
                          std::to_string(data_bytes_ - written_) + " data bytes missing)");
  }
  file_.sync();
  file_.close();
  checksums_ = checksummer_.finish();
}

}  // namespace fsdp::checkpoint
