// Training or evaluation tokens: one token file, or every .npy and .bin file
// of a directory in name order, read as one stream of tokens (the files
// concatenated) and cut into consecutive, non-overlapping windows of
// `window_tokens` tokens (a model's sequence length + 1: inputs are a
// window's first tokens, targets its last). The tokens after the last whole
// window are not used.
//
//   auto data = TokenDataset::open("train.npy", std::nullopt, 49);
//   data.check_token_ids(vocabulary);           // before training starts
//   std::vector<std::int64_t> row(data.window_tokens());
//   data.read_window(WindowOrder(seed, data.windows()).window_of(draw), row.data());
//
// Nothing is read but the rows asked for (the files are mapped), and no
// communication is needed: every rank opens the files itself.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "fsdp/data/token_file.h"

namespace fsdp::data {

class TokenDataset {
 public:
  // `path`: a token file, or a directory whose *.npy and *.bin files (not its
  // subdirectories, nor other files) are read in name order. `raw_dtype`: the
  // type of raw (.bin) files. Throws DataError naming the path and what is
  // wrong: no such path, a directory with no token files, a bad file
  // (TokenFile::open), or fewer tokens than one window.
  // REQUIRES: window_tokens >= 2.
  static TokenDataset open(const std::filesystem::path& path, std::optional<TokenDtype> raw_dtype,
                           std::int64_t window_tokens);

  const std::filesystem::path& path() const { return path_; }
  const std::vector<TokenFile>& files() const { return files_; }
  std::int64_t tokens() const { return tokens_; }
  std::int64_t window_tokens() const { return window_tokens_; }
  std::int64_t windows() const { return tokens_ / window_tokens_; }

  // Window `window`'s tokens as int64 into `out` (window_tokens() of them);
  // a window may span files. REQUIRES: 0 <= window < windows().
  void read_window(std::int64_t window, std::int64_t* out) const;

  // Throws DataError for the first token id outside [0, vocabulary), naming
  // its file, its position in that file, its value and the vocabulary. Reads
  // every file through once (at memory speed, without keeping it resident).
  void check_token_ids(std::int64_t vocabulary) const;

  // What identifies the stream for a resumed run, whose order of windows
  // depends on it: every file's name (not its directory, which may move) and
  // token count, and the window length.
  nlohmann::json identity() const;

  // "train.npy: 1,234,567 uint16 tokens, 25,195 windows of 49" (or "3 files
  // in DIR: ...").
  std::string describe() const;

 private:
  std::filesystem::path path_;
  std::vector<TokenFile> files_;
  std::vector<std::int64_t> file_starts_;  // each file's first token in the stream
  std::int64_t tokens_ = 0;
  std::int64_t window_tokens_ = 0;
};

// 1234567 -> "1,234,567".
std::string with_thousands(std::int64_t value);

}  // namespace fsdp::data
