#include "fsdp/checkpoint/checkpoint_series.h"

#include <algorithm>
#include <cstdio>
#include <set>
#include <string_view>

#include "fsdp/checkpoint/checkpoint_error.h"
#include "fsdp/checkpoint/checkpoint_format.h"
#include "fsdp/checkpoint/checkpoint_index.h"
#include "fsdp/checkpoint/file_io.h"

namespace fsdp::checkpoint {
namespace {

namespace fs = std::filesystem;

constexpr std::string_view kStepPrefix = "step-";
constexpr std::size_t kMaxStepDigits = 18;  // below 10^18: no overflow

// Removes `suffix` from the end of `text`, when it is there and something precedes it.
bool strip_suffix(std::string& text, std::string_view suffix) {
  if (text.size() <= suffix.size() ||
      text.compare(text.size() - suffix.size(), suffix.size(), suffix) != 0) {
    return false;
  }
  text.resize(text.size() - suffix.size());
  return true;
}

}  // namespace

std::string step_directory_name(std::int64_t step) {
  char name[40];
  std::snprintf(name, sizeof name, "step-%08lld", static_cast<long long>(step));
  return name;
}

std::int64_t step_of_directory_name(const std::string& name) {
  if (name.size() < kStepPrefix.size() + 8 || name.size() > kStepPrefix.size() + kMaxStepDigits ||
      name.compare(0, kStepPrefix.size(), kStepPrefix) != 0) {
    return -1;
  }
  std::int64_t step = 0;
  for (std::size_t i = kStepPrefix.size(); i < name.size(); ++i) {
    if (name[i] < '0' || name[i] > '9') return -1;
    step = step * 10 + (name[i] - '0');
  }
  return step;
}

bool is_checkpoint_series(const fs::path& directory) {
  std::error_code error;
  return fs::exists(fs::symlink_status(directory / kLatestFileName, error));
}

fs::path latest_checkpoint(const fs::path& series) {
  const auto pointer = series / kLatestFileName;
  const auto file = File::open_for_reading(pointer);  // regular files only, never a FIFO
  constexpr std::int64_t kMaxPointerBytes = 64;
  if (file.size() > kMaxPointerBytes) {
    throw CheckpointError(pointer.string() + ": " + std::to_string(file.size()) +
                          " bytes; it holds one step directory's name");
  }
  std::string name(static_cast<std::size_t>(file.size()), '\0');
  file.read_exactly(0, name.data(), file.size());
  while (!name.empty() && (name.back() == '\n' || name.back() == ' ')) name.pop_back();
  if (step_of_directory_name(name) < 0) {
    throw CheckpointError(pointer.string() + ": expected a step directory name such as " +
                          step_directory_name(100) + ", found \"" + name.substr(0, 40) + "\"");
  }
  const auto directory = file_inside(series, name, pointer.string());
  std::error_code error;
  if (!fs::is_directory(directory, error)) {
    throw CheckpointError(pointer.string() + " names " + name + ", but " + directory.string() +
                          " is not there");
  }
  return directory;
}

fs::path resolve_checkpoint(const fs::path& directory) {
  return is_checkpoint_series(directory) ? latest_checkpoint(directory) : directory;
}

std::vector<std::int64_t> series_steps(const fs::path& series) {
  std::vector<std::int64_t> steps;
  for (const auto& name : directory_entries(series)) {
    if (name.empty() || name.back() != '/') continue;
    const auto step = step_of_directory_name(name.substr(0, name.size() - 1));
    if (step >= 0) steps.push_back(step);
  }
  std::sort(steps.begin(), steps.end());
  return steps;
}

void publish_latest(const fs::path& series, std::int64_t step) {
  const auto temporary = series / (std::string(kLatestFileName) + ".partial");
  const std::string text = step_directory_name(step) + "\n";
  auto file = File::create(temporary);
  file.append(text.data(), static_cast<std::int64_t>(text.size()));
  file.sync();
  file.close();
  std::error_code error;
  fs::rename(temporary, series / kLatestFileName, error);
  if (error) {
    throw CheckpointError("cannot rename " + temporary.string() + " to " +
                          (series / kLatestFileName).string() + ": " + error.message());
  }
  sync_directory(series);
}

std::vector<std::int64_t> steps_to_prune(const std::vector<std::int64_t>& steps,
                                         std::int64_t latest, std::int64_t keep_last,
                                         std::int64_t keep_every) {
  std::vector<std::int64_t> sorted = steps;
  std::sort(sorted.begin(), sorted.end());
  std::set<std::int64_t> kept = {latest};
  const std::size_t last =
      keep_last > 0 ? std::min(sorted.size(), static_cast<std::size_t>(keep_last)) : sorted.size();
  kept.insert(sorted.end() - static_cast<std::ptrdiff_t>(last), sorted.end());
  std::vector<std::int64_t> pruned;
  for (const auto step : sorted) {
    if (kept.count(step) == 0 && !(keep_every > 0 && step % keep_every == 0)) {
      pruned.push_back(step);
    }
  }
  return pruned;
}

void prune_series(const fs::path& series, const std::vector<std::int64_t>& steps) {
  for (const auto step : steps) {
    const auto directory = series / step_directory_name(step);
    check_save_directory(directory);  // a checkpoint's files only: nothing else is deleted
    std::error_code error;
    for (const auto& leftover : {directory, fs::path(directory.string() + ".previous"),
                                 fs::path(directory.string() + ".partial")}) {
      fs::remove_all(leftover, error);
      if (error) {
        throw CheckpointError("cannot remove " + leftover.string() + ": " + error.message());
      }
    }
  }
}

void remove_interrupted_saves(const fs::path& series) {
  for (const auto& name : directory_entries(series)) {
    if (name.back() != '/') continue;
    const std::string directory = name.substr(0, name.size() - 1);
    std::string stem = directory;
    if (!strip_suffix(stem, ".partial") || step_of_directory_name(stem) < 0) continue;
    std::error_code error;
    fs::remove_all(series / directory, error);
    if (error) {
      throw CheckpointError("cannot remove " + (series / name).string() + ": " + error.message());
    }
  }
}

void check_series_directory(const fs::path& requested) {
  const auto series = resolve_directory_link(requested);
  std::error_code error;
  if (!fs::exists(series, error)) return;
  if (!fs::is_directory(series, error)) {
    throw CheckpointError(series.string() + " exists and is not a directory");
  }
  std::vector<std::string> foreign;
  for (const auto& name : directory_entries(series)) {
    const bool is_directory = name.back() == '/';
    const std::string entry = is_directory ? name.substr(0, name.size() - 1) : name;
    // Our own leftovers of an interrupted save (DIR.partial, DIR.previous) count as ours.
    std::string stem = entry;
    bool leftover = strip_suffix(stem, ".partial");
    leftover = strip_suffix(stem, ".previous") || leftover;
    if (is_directory && step_of_directory_name(stem) >= 0) {
      // A leftover is ours whatever it holds; the save of that step, or the
      // next pruning, removes it.
      if (!leftover) check_save_directory(series / entry);
    } else if (stem != kLatestFileName) {
      foreign.push_back(name);
    }
  }
  refuse_to_lose(series, foreign,
                 "a series of checkpoints (--keep-checkpoints) holds only step-NNNNNNNN "
                 "directories and 'latest'; save it elsewhere");
}

}  // namespace fsdp::checkpoint
