// Reading one rank file of a distributed checkpoint (distributed_checkpoint.h)
// by byte ranges, verifying the block checksums (block_checksums.h) that the
// index recorded for every block a read touches.
//
// Reads are rounded out to whole blocks, because a checksum covers a whole
// block: a read of a few bytes costs one block (4 MiB by default) of reading
// and hashing. The last blocks read stay in a staging buffer and later reads
// inside them are served from it, so reading a file's ranges in increasing
// order (parameter after parameter, chunk after chunk) reads and hashes each
// block once.
//
// Used by load_checkpoint (resharding) and by CheckpointReader (shard-inspect).
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>

#include "fsdp/checkpoint/checkpoint_index.h"
#include "fsdp/checkpoint/safetensors_file.h"

namespace fsdp::checkpoint {

// Thread-safety: none (one staging buffer); use one reader per thread.
class VerifiedReader {
 public:
  // Opens `path`, checks that its size is `record.bytes` and the checksums
  // of the blocks its header lies in, then validates the header and the
  // file's metadata (its rank and world size must be the record's). Reads go
  // through a staging buffer of `chunk_bytes` rounded up to whole checksum
  // blocks. Throws CheckpointError naming the file when it is missing, has
  // another size, fails a checksum, has an invalid header or names another rank.
  VerifiedReader(const std::filesystem::path& path, FileRecord record, std::int64_t chunk_bytes);

  const SafetensorsFile& file() const { return file_; }
  const FileRecord& record() const { return record_; }

  // Copies file bytes [offset, offset + bytes) into `destination`, after
  // verifying the checksum of every block the range touches. Throws
  // CheckpointError naming the file and the block on a mismatch ("the file is
  // corrupt"), and when the range does not lie inside the file.
  void read(std::int64_t offset, char* destination, std::int64_t bytes);

  // Frees the staging buffer (the next read reads and verifies again). For
  // callers holding many readers, so that only the ones in use hold memory.
  void release_staging();

 private:
  // Reads raw file bytes [offset, offset + bytes) into a buffer.
  using ByteSource = std::function<void(std::int64_t offset, char* into, std::int64_t bytes)>;
  // read(), from `source`: also used before file_ exists, for its header.
  void read_verified(const ByteSource& source, std::int64_t offset, char* destination,
                     std::int64_t bytes);

  // Declared in this order: file_'s constructor reads through the others.
  FileRecord record_;
  std::int64_t chunk_bytes_ = 0;  // a multiple of the checksum block size
  std::unique_ptr<char[]> staging_;
  // File bytes [staged_begin_, staged_end_) are in staging_, already verified.
  std::int64_t staged_begin_ = 0;
  std::int64_t staged_end_ = 0;
  SafetensorsFile file_;
};

}  // namespace fsdp::checkpoint
