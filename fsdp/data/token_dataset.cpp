#include "fsdp/data/token_dataset.h"

#include <algorithm>
#include <stdexcept>
#include <system_error>

#include "fsdp/data/data_error.h"

namespace fsdp::data {
namespace fs = std::filesystem;

std::string with_thousands(std::int64_t value) {
  std::string digits = std::to_string(value < 0 ? -value : value);
  for (auto at = static_cast<std::int64_t>(digits.size()) - 3; at > 0; at -= 3) {
    digits.insert(static_cast<std::size_t>(at), ",");
  }
  return (value < 0 ? "-" : "") + digits;
}

namespace {

bool is_token_file(const fs::directory_entry& entry) {
  std::error_code error;
  if (!entry.is_regular_file(error)) return false;
  const auto extension = entry.path().extension();
  return extension == ".npy" || extension == ".bin";
}

std::vector<fs::path> token_files_in(const fs::path& path) {
  std::error_code error;
  const auto status = fs::status(path, error);
  if (!fs::exists(status)) throw DataError(path.string() + ": no such file or directory");
  if (!fs::is_directory(status)) return {path};
  std::vector<fs::path> files;
  for (const auto& entry : fs::directory_iterator(path, error)) {
    if (is_token_file(entry)) files.push_back(entry.path());
  }
  if (error) throw DataError(path.string() + ": cannot list it: " + error.message());
  if (files.empty()) {
    throw DataError(path.string() + ": a directory with no token files (*.npy or *.bin) in it");
  }
  std::sort(files.begin(), files.end());
  return files;
}

}  // namespace

TokenDataset TokenDataset::open(const fs::path& path, std::optional<TokenDtype> raw_dtype,
                                std::int64_t window_tokens) {
  if (window_tokens < 2) {
    throw std::invalid_argument("TokenDataset: windows of " + std::to_string(window_tokens) +
                                " tokens (expected at least 2)");
  }
  TokenDataset dataset;
  dataset.path_ = path;
  dataset.window_tokens_ = window_tokens;
  for (const auto& file_path : token_files_in(path)) {
    dataset.files_.push_back(TokenFile::open(file_path, raw_dtype));
    dataset.file_starts_.push_back(dataset.tokens_);
    dataset.tokens_ += dataset.files_.back().tokens();
  }
  if (dataset.windows() == 0) {
    throw DataError(path.string() + ": " + with_thousands(dataset.tokens_) +
                    " tokens, fewer than one window of " + std::to_string(window_tokens) +
                    " (--seq-len " + std::to_string(window_tokens - 1) +
                    " + 1: the inputs and the next token of each)");
  }
  return dataset;
}

void TokenDataset::read_window(std::int64_t window, std::int64_t* out) const {
  if (window < 0 || window >= windows()) {
    throw std::out_of_range(path_.string() + ": window " + std::to_string(window) + " of " +
                            std::to_string(windows()));
  }
  std::int64_t position = window * window_tokens_;
  std::int64_t left = window_tokens_;
  // The last file starting at or before `position`; empty files are skipped.
  auto file = static_cast<std::size_t>(
      std::upper_bound(file_starts_.begin(), file_starts_.end(), position) - file_starts_.begin() -
      1);
  while (left > 0) {
    const std::int64_t offset = position - file_starts_[file];
    const std::int64_t count = std::min(left, files_[file].tokens() - offset);
    if (count > 0) {
      files_[file].read(offset, count, out);
      out += count;
      position += count;
      left -= count;
    }
    ++file;
  }
}

void TokenDataset::check_token_ids(std::int64_t vocabulary) const {
  for (const auto& file : files_) {
    const auto found = file.first_out_of_range(vocabulary);
    if (!found) continue;
    throw DataError(file.path().string() + ": token " + with_thousands(found->index) +
                    " (counting from 0) is " + std::to_string(found->value) +
                    ", outside the model's vocabulary of " + std::to_string(vocabulary) +
                    " (ids 0-" + std::to_string(vocabulary - 1) +
                    "; was it written with another tokenizer?)");
  }
}

nlohmann::json TokenDataset::identity() const {
  nlohmann::json files = nlohmann::json::array();
  for (const auto& file : files_) {
    files.push_back({{"name", file.path().filename().string()}, {"tokens", file.tokens()}});
  }
  return {{"files", files}, {"tokens", tokens_}, {"window_tokens", window_tokens_}};
}

std::string TokenDataset::describe() const {
  std::string dtypes;
  for (const auto& file : files_) {
    const auto name = token_dtype_name(file.dtype());
    if (dtypes.find(name) == std::string::npos) dtypes += (dtypes.empty() ? "" : "/") + name;
  }
  const std::string where = files_.size() == 1 && files_[0].path() == path_
                                ? path_.string()
                                : std::to_string(files_.size()) + " file(s) in " + path_.string();
  return where + ": " + with_thousands(tokens_) + " " + dtypes + " tokens, " +
         with_thousands(windows()) + " windows of " + std::to_string(window_tokens_);
}

}  // namespace fsdp::data
