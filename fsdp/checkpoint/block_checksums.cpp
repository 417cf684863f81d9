#include "fsdp/checkpoint/block_checksums.h"

#include <xxhash.h>

#include <algorithm>
#include <cstdio>
#include <new>

#include "fsdp/checkpoint/checkpoint_error.h"

namespace fsdp::checkpoint {

std::uint64_t block_checksum(const void* data, std::int64_t bytes) {
  return XXH3_64bits(data, static_cast<std::size_t>(bytes));
}

std::string format_checksum(std::uint64_t checksum) {
  char text[17];
  std::snprintf(text, sizeof text, "%016llx", static_cast<unsigned long long>(checksum));
  return text;
}

std::uint64_t parse_checksum(const std::string& text, const std::string& context) {
  if (text.size() != 16 || text.find_first_not_of("0123456789abcdef") != std::string::npos) {
    throw CheckpointError(context + ": checksum \"" + text + "\" is not 16 lowercase hex digits");
  }
  return std::stoull(text, nullptr, 16);
}

BlockChecksummer::BlockChecksummer(std::int64_t block_bytes)
    : block_bytes_(block_bytes), state_(XXH3_createState()) {
  if (state_ == nullptr) throw std::bad_alloc();
  XXH3_64bits_reset(state_);
}

BlockChecksummer::~BlockChecksummer() { XXH3_freeState(state_); }

void BlockChecksummer::update(const void* data, std::int64_t bytes) {
  const auto* cursor = static_cast<const char*>(data);
  while (bytes > 0) {
    const std::int64_t take = std::min(bytes, block_bytes_ - in_block_);
    XXH3_64bits_update(state_, cursor, static_cast<std::size_t>(take));
    cursor += take;
    bytes -= take;
    in_block_ += take;
    if (in_block_ == block_bytes_) {
      checksums_.push_back(XXH3_64bits_digest(state_));
      XXH3_64bits_reset(state_);
      in_block_ = 0;
    }
  }
}

std::vector<std::uint64_t> BlockChecksummer::finish() {
  if (in_block_ > 0) {
    checksums_.push_back(XXH3_64bits_digest(state_));
    in_block_ = 0;
  }
  return std::move(checksums_);
}

}  // namespace fsdp::checkpoint
