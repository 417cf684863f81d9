// Reading and writing safetensors files (fsdp/checkpoint/safetensors_format.h) by
// byte ranges: the reader reads and validates only the header when opened,
// then reads exactly the ranges asked for; the writer streams tensor data
// after a header it writes first, and never holds a whole file.
#pragma once

#include <atomic>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "fsdp/checkpoint/block_checksums.h"
#include "fsdp/checkpoint/file_io.h"
#include "fsdp/checkpoint/safetensors_format.h"

namespace fsdp::checkpoint {

// Thread-safety: reads may run concurrently (pread); the byte counter is atomic.
class SafetensorsFile {
 public:
  // Returns the N header bytes to parse, given the open file and the end of
  // its header (8 + N, already checked against the file's size); throws to
  // refuse the file. For readers that must check bytes before they are
  // parsed (a rank file's checksums: verified_reader.h).
  using HeaderReader = std::function<std::string(const File& file, std::int64_t header_end)>;

  // Opens `path` and validates its header against the file's size; the
  // header bytes come from `read_header` when given, else straight from the
  // file. Throws CheckpointError naming the file on any violation.
  explicit SafetensorsFile(const std::filesystem::path& path,
                           const HeaderReader& read_header = nullptr);

  std::string path() const { return file_.path().string(); }
  const SafetensorsHeader& header() const { return header_; }
  const std::vector<TensorEntry>& tensors() const { return header_.tensors; }
  const std::map<std::string, std::string>& metadata() const { return header_.metadata; }
  std::int64_t file_size() const { return file_size_; }

  // The tensor named `name`; throws CheckpointError naming the file and the key.
  const TensorEntry& tensor(std::string_view name) const;

  // Reads bytes [byte_offset, byte_offset + bytes) of `tensor`'s data.
  // REQUIRES: the range lies inside the tensor (throws std::out_of_range otherwise).
  void read_tensor_bytes(const TensorEntry& tensor, std::int64_t byte_offset, void* destination,
                         std::int64_t bytes) const;
  // Reads raw file bytes [offset, offset + bytes) (for checksum verification).
  void read_file_bytes(std::int64_t offset, void* destination, std::int64_t bytes) const;

  // Bytes read through this object since it was opened, the header included.
  std::int64_t bytes_read() const { return bytes_read_.load(); }

 private:
  File file_;
  std::int64_t file_size_ = 0;
  SafetensorsHeader header_;
  mutable std::atomic<std::int64_t> bytes_read_{0};
};

// Writes one safetensors file. Declare every tensor up front; then append
// their bytes in file order (tensors_in_file_order()), in pieces of any size.
// finish() checks that every byte was written and syncs the file to disk.
// A writer destroyed before finish() leaves an incomplete file behind, which
// is why callers write under a staging name and rename on success.
class SafetensorsWriter {
 public:
  SafetensorsWriter(const std::filesystem::path& path, std::vector<TensorDeclaration> tensors,
                    std::map<std::string, std::string> metadata = {},
                    std::int64_t checksum_block_bytes = kDefaultChecksumBlockBytes);

  // The declared tensors with their data offsets, in the order their bytes must be appended.
  const std::vector<TensorEntry>& tensors_in_file_order() const { return entries_; }
  // Appends the next `bytes` bytes of tensor data. Throws CheckpointError when
  // more bytes are appended than the declared tensors hold.
  void append(const void* data, std::int64_t bytes);
  // Which tensor the next appended byte belongs to (empty when all are written).
  std::string next_tensor() const;
  // Syncs and closes. Throws CheckpointError naming the tensor when data is missing.
  void finish();

  std::int64_t file_size() const { return header_bytes_ + data_bytes_; }
  // Block checksums of the whole file (header included); valid after finish().
  const std::vector<std::uint64_t>& checksums() const { return checksums_; }

 private:
  File file_;
  std::vector<TensorEntry> entries_;
  std::int64_t header_bytes_ = 0;  // 8 + N
  std::int64_t data_bytes_ = 0;
  std::int64_t written_ = 0;  // data bytes appended so far
  BlockChecksummer checksummer_;
  std::vector<std::uint64_t> checksums_;
};

}  // namespace fsdp::checkpoint
