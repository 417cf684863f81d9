// The resident memory of this process, as Linux reports it, for the tests
// that measure what an operation adds at its peak.
#pragma once

#include <cstdint>
#include <fstream>
#include <string>

namespace fsdp::testing {

// A field of /proc/self/status in bytes ("VmRSS", "VmHWM"); -1 when absent.
inline std::int64_t status_bytes(const std::string& field) {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind(field + ":", 0) == 0) return std::stoll(line.substr(field.size() + 1)) * 1024;
  }
  return -1;
}

// Starts a new high-water mark (VmHWM) at the current resident set (Linux >= 4.0).
inline void reset_peak_rss() { std::ofstream("/proc/self/clear_refs") << "5"; }

}  // namespace fsdp::testing
