#include "fsdp/launch/process_memory.h"

#include <fstream>
#include <string>

namespace fsdp::launch {

ResidentMemory resident_memory() {
  ResidentMemory memory;
  std::ifstream status("/proc/self/status");
  std::string line;
  // Lines read "VmRSS:     123456 kB".
  const auto kibibytes = [&line](const char* field, std::int64_t& bytes) {
    const std::string prefix = std::string(field) + ":";
    if (line.rfind(prefix, 0) == 0) bytes = std::stoll(line.substr(prefix.size())) * 1024;
  };
  while (std::getline(status, line)) {
    kibibytes("VmRSS", memory.current);
    kibibytes("VmHWM", memory.peak);
  }
  return memory;
}

bool reset_peak_resident_memory() {
  {
    std::ofstream clear_refs("/proc/self/clear_refs");
    if (!clear_refs) return false;
    clear_refs << "5";
  }
  // The kernel takes the write silently where it does not support "5": check.
  const ResidentMemory after = resident_memory();
  return after.peak >= 0 && after.peak <= after.current + (std::int64_t{4} << 20);
}

}  // namespace fsdp::launch
