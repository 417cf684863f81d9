// One file of token ids, memory-mapped read-only: a NumPy .npy file holding a
// 1-D array (its header says the dtype), or a raw .bin file of one integer
// type and nothing else (the caller says which). The format of both is
// described in README, "Train on your own text".
//
// Reads never go past the end of the file (its size is checked against the
// header when it is opened), and they drop the pages they touched from the
// process afterwards (madvise DONTNEED): a file larger than memory is read
// with a resident set the size of the rows read, the page cache holding the
// rest for the kernel to reclaim.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>

namespace fsdp::data {

// The integer types token ids are stored in.
enum class TokenDtype { kUint16, kUint32, kInt32, kInt64 };

std::size_t token_dtype_size(TokenDtype dtype);
std::string token_dtype_name(TokenDtype dtype);  // "uint16", as NumPy names it
// Throws DataError for anything but uint16, uint32, int32 or int64.
TokenDtype token_dtype_from_name(const std::string& name);

// A token id outside [0, vocabulary) and where it is.
struct OutOfRangeToken {
  std::int64_t index = 0;  // in this file's tokens, from 0
  std::int64_t value = 0;
};

class TokenFile {
 public:
  // `path` ending in ".npy" is read as NumPy (version 1, 2 or 3 headers; a
  // 1-D little-endian array of a TokenDtype); anything else as raw tokens of
  // `raw_dtype`. Throws DataError naming the file and what is wrong: no such
  // file, a bad magic or header, an unsupported dtype or shape, a size that
  // disagrees with the header, a raw file with no `raw_dtype` or whose size
  // is not a whole number of tokens.
  static TokenFile open(const std::filesystem::path& path, std::optional<TokenDtype> raw_dtype);

  const std::filesystem::path& path() const { return path_; }
  TokenDtype dtype() const { return dtype_; }
  std::int64_t tokens() const { return tokens_; }
  bool is_numpy() const { return numpy_; }

  // Tokens [first, first + count) as int64 into `out`.
  // REQUIRES: 0 <= first, first + count <= tokens().
  void read(std::int64_t first, std::int64_t count, std::int64_t* out) const;

  // The first token id outside [0, vocabulary), reading the file through in
  // order; nullopt when every id is a valid one.
  std::optional<OutOfRangeToken> first_out_of_range(std::int64_t vocabulary) const;

 private:
  struct Mapping;

  std::filesystem::path path_;
  TokenDtype dtype_ = TokenDtype::kUint16;
  std::int64_t tokens_ = 0;
  bool numpy_ = false;
  std::shared_ptr<const Mapping> mapping_;  // null for a file with no tokens
  std::int64_t data_offset_ = 0;            // bytes from the start of the file
};

}  // namespace fsdp::data
