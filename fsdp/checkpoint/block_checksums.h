// Checksums of a file in fixed-size blocks (XXH3-64 from libxxhash).
//
// Why blocks rather than one digest per file: a resharded load reads only
// the ranges of each file that land in the reader's shard, so a whole-file
// digest could be checked only by reading every file completely on some
// rank. With blocks, each rank verifies exactly the blocks it reads (rounded
// out to block boundaries, so the extra reading is at most two blocks per
// range) and a same-world-size load, which reads whole files, verifies all.
// XXH3 runs at memory bandwidth; a corrupt byte is what it must catch, not an
// adversary.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

struct XXH3_state_s;

namespace fsdp::checkpoint {

inline constexpr std::int64_t kDefaultChecksumBlockBytes = std::int64_t{4} << 20;  // 4 MiB
inline constexpr const char* kChecksumAlgorithm = "xxh3-64";

// Digest of `bytes` bytes, as computed for each block.
std::uint64_t block_checksum(const void* data, std::int64_t bytes);
// 16 lowercase hex digits, as stored in index.json.
std::string format_checksum(std::uint64_t checksum);
// Throws CheckpointError naming `context` when `text` is not 16 hex digits.
std::uint64_t parse_checksum(const std::string& text, const std::string& context);

// Computes the checksums of a byte stream fed in pieces of any size.
class BlockChecksummer {
 public:
  explicit BlockChecksummer(std::int64_t block_bytes = kDefaultChecksumBlockBytes);
  ~BlockChecksummer();
  BlockChecksummer(const BlockChecksummer&) = delete;
  BlockChecksummer& operator=(const BlockChecksummer&) = delete;

  void update(const void* data, std::int64_t bytes);
  // The checksum of every block, the last one possibly short. Ends the stream.
  std::vector<std::uint64_t> finish();
  std::int64_t block_bytes() const { return block_bytes_; }

 private:
  std::int64_t block_bytes_;
  std::int64_t in_block_ = 0;
  XXH3_state_s* state_;
  std::vector<std::uint64_t> checksums_;
};

}  // namespace fsdp::checkpoint
