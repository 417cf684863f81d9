#include "fsdp/launch/metrics_file.h"

#include <cerrno>
#include <cstring>
#include <fstream>
#include <iterator>
#include <sstream>
#include <stdexcept>
#include <vector>

namespace fsdp::launch {
namespace {

namespace fs = std::filesystem;

[[noreturn]] void fail(const fs::path& path, const std::string& what) {
  throw std::runtime_error("--metrics-file " + path.string() + ": " + what);
}

// Keeps the lines of steps up to `last_step`: the steps a resumed run takes
// again would otherwise appear twice.
void drop_steps_after(const fs::path& path, std::int64_t last_step) {
  std::error_code error;
  if (!fs::exists(path, error)) return;
  std::ifstream in(path, std::ios::binary);
  if (!in) fail(path, "cannot read it");
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::vector<std::string> kept;
  // A last line without its newline was cut by a killed job: dropped too.
  bool dropped = !text.empty() && text.back() != '\n';
  std::istringstream lines(text);
  for (std::string line; std::getline(lines, line);) {
    if (lines.eof() && dropped) break;  // the torn last line
    const auto record = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    const auto step = record.is_object() ? record.find("step") : record.end();
    if (step != record.end() && step->is_number_integer() &&
        step->get<std::int64_t>() > last_step) {
      dropped = true;
      continue;
    }
    kept.push_back(line);
  }
  if (!dropped) return;
  const fs::path temporary = path.string() + ".partial";
  {
    std::ofstream out(temporary, std::ios::trunc);
    for (const auto& line : kept) out << line << '\n';
    out.flush();
    if (!out) fail(temporary, "cannot write it");
  }
  fs::rename(temporary, path, error);
  if (error) fail(path, "cannot replace it: " + error.message());
}

}  // namespace

void check_metrics_file(const fs::path& path, bool resuming) {
  std::error_code error;
  if (!resuming && fs::exists(path, error)) {
    fail(path,
         "exists; a new run would mix its metrics with another run's (remove it, or give "
         "another path)");
  }
  if (fs::exists(path, error) && !fs::is_regular_file(path, error))
    fail(path, "not a regular file");
}

MetricsFile::MetricsFile(const fs::path& path, std::int64_t resume_step) : path_(path) {
  if (resume_step > 0) drop_steps_after(path, resume_step);
  file_ = std::fopen(path.c_str(), "a");
  if (file_ == nullptr) fail(path, std::strerror(errno));
}

MetricsFile::~MetricsFile() {
  if (file_ != nullptr) std::fclose(file_);
}

void MetricsFile::write(const nlohmann::ordered_json& record) {
  const std::string line = record.dump() + "\n";
  if (std::fwrite(line.data(), 1, line.size(), file_) != line.size() || std::fflush(file_) != 0) {
    fail(path_, std::strerror(errno));
  }
}

}  // namespace fsdp::launch
