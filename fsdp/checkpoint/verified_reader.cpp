#include "fsdp/checkpoint/verified_reader.h"

#include <algorithm>
#include <cstring>
#include <string>
#include <utility>

#include "fsdp/checkpoint/block_checksums.h"
#include "fsdp/checkpoint/checkpoint_error.h"
#include "fsdp/checkpoint/checkpoint_format.h"

namespace fsdp::checkpoint {

VerifiedReader::VerifiedReader(const std::filesystem::path& path, FileRecord record,
                               std::int64_t chunk_bytes)
    : record_(std::move(record)),
      // read_checkpoint_index checked that the block size is positive and
      // that there is one checksum per block.
      chunk_bytes_(std::max<std::int64_t>(1, chunk_bytes / record_.checksum_block_bytes) *
                   record_.checksum_block_bytes),
      // The size and the checksums are checked before a byte of the header
      // is parsed: a corrupt rank file is named as corrupt, and the JSON
      // parser only ever sees the bytes that were saved.
      file_(path, [this](const File& file, std::int64_t header_end) {
        if (file.size() != record_.bytes) {
          throw CheckpointError(file.path().string() + ": " + std::to_string(file.size()) +
                                " bytes, but the index recorded " + std::to_string(record_.bytes));
        }
        std::string header(static_cast<std::size_t>(header_end - kHeaderLengthBytes), '\0');
        read_verified([&](std::int64_t offset, char* into,
                          std::int64_t bytes) { file.read_exactly(offset, into, bytes); },
                      kHeaderLengthBytes, header.data(), header_end - kHeaderLengthBytes);
        return header;
      }) {
  // The file's own word on whose shards it holds: a rank file renamed or
  // copied into another rank's place would otherwise load as that rank's.
  const auto& metadata = file_.header().metadata;
  const auto said = [&](const char* key) {
    const auto found = metadata.find(key);
    return found == metadata.end() ? std::string("(absent)") : found->second.substr(0, 40);
  };
  if (said(rank_file_metadata_key::kFormat) != kCheckpointFormat ||
      said(rank_file_metadata_key::kRank) != std::to_string(record_.rank) ||
      said(rank_file_metadata_key::kWorldSize) != std::to_string(record_.world_size)) {
    throw CheckpointError(file_.path() + ": its metadata says format " +
                          said(rank_file_metadata_key::kFormat) + ", rank " +
                          said(rank_file_metadata_key::kRank) + " of " +
                          said(rank_file_metadata_key::kWorldSize) +
                          "; the index lists it as rank " + std::to_string(record_.rank) + " of " +
                          std::to_string(record_.world_size) + " (files swapped or copied?)");
  }
}

void VerifiedReader::read(std::int64_t offset, char* destination, std::int64_t bytes) {
  read_verified([this](std::int64_t at, char* into,
                       std::int64_t count) { file_.read_file_bytes(at, into, count); },
                offset, destination, bytes);
}

void VerifiedReader::read_verified(const ByteSource& source, std::int64_t offset, char* destination,
                                   std::int64_t bytes) {
  if (offset < 0 || bytes < 0 || offset > record_.bytes || bytes > record_.bytes - offset) {
    throw CheckpointError(file_.path() + ": bytes [" + std::to_string(offset) + ", " +
                          std::to_string(offset + bytes) + ") lie outside the file's " +
                          std::to_string(record_.bytes) + " bytes");
  }
  const std::int64_t block = record_.checksum_block_bytes;
  // Whole blocks only, up to the block that holds the last byte asked for.
  const std::int64_t read_end =
      std::min(record_.bytes, (offset + bytes + block - 1) / block * block);
  while (bytes > 0) {
    if (offset >= staged_begin_ && offset < staged_end_) {
      const std::int64_t count = std::min(bytes, staged_end_ - offset);
      std::memcpy(destination, staging_.get() + (offset - staged_begin_),
                  static_cast<std::size_t>(count));
      destination += count;
      offset += count;
      bytes -= count;
      continue;
    }
    const std::int64_t position = offset / block * block;
    const std::int64_t length = std::min(chunk_bytes_, read_end - position);
    if (!staging_) staging_.reset(new char[static_cast<std::size_t>(chunk_bytes_)]);
    staged_begin_ = staged_end_ = 0;  // invalid until verified
    source(position, staging_.get(), length);
    for (std::int64_t b = 0; b < length; b += block) {
      const std::int64_t index = (position + b) / block;
      const auto found = block_checksum(staging_.get() + b, std::min(block, length - b));
      if (found != record_.checksums[index]) {
        throw CheckpointError(file_.path() + ": checksum mismatch in block " +
                              std::to_string(index) + " (bytes " + std::to_string(index * block) +
                              " to " +
                              std::to_string(std::min(record_.bytes, (index + 1) * block)) +
                              "): expected " + format_checksum(record_.checksums[index]) +
                              ", found " + format_checksum(found) + "; the file is corrupt");
      }
    }
    staged_begin_ = position;
    staged_end_ = position + length;
  }
}

void VerifiedReader::release_staging() {
  staging_.reset();
  staged_begin_ = staged_end_ = 0;
}

}  // namespace fsdp::checkpoint
