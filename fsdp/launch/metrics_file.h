// Training metrics as JSON lines (fsdp-train --metrics-file): one object per
// logged step, written by rank 0, flushed line by line so that a killed job
// keeps what it logged. A resumed run first drops the lines of steps after
// the checkpoint it resumes from (it is about to take them again), so the
// file never holds a step twice.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <string>

namespace fsdp::launch {

class MetricsFile {
 public:
  // Opens `path` for appending. `resume_step` > 0: lines whose "step" is
  // greater are dropped first (rewritten through a temporary and a rename),
  // and so is a last line cut short by a killed job; other lines that are
  // not JSON objects with a "step" are kept as they are.
  // Throws std::runtime_error naming the file when it cannot be written.
  MetricsFile(const std::filesystem::path& path, std::int64_t resume_step);
  ~MetricsFile();
  MetricsFile(const MetricsFile&) = delete;
  MetricsFile& operator=(const MetricsFile&) = delete;

  // Appends `record` as one line and flushes it.
  void write(const nlohmann::ordered_json& record);

 private:
  std::filesystem::path path_;
  std::FILE* file_ = nullptr;
};

// Throws std::runtime_error unless a run may write `path`: a fresh run
// (`resuming` false) refuses an existing file rather than overwrite it.
void check_metrics_file(const std::filesystem::path& path, bool resuming);

}  // namespace fsdp::launch
