#include "fsdp/launch/backend_choice.h"

#include <map>

#include "fsdp/errors.h"

namespace fsdp::launch {

int chosen_device(int local_rank, int visible_devices) {
  return visible_devices > 0 ? local_rank % visible_devices : -1;
}

std::vector<bool> owns_chosen_device(const std::vector<std::string>& chosen_uuids) {
  std::map<std::string, int> choosers;
  for (const auto& uuid : chosen_uuids) ++choosers[uuid];
  std::vector<bool> owns;
  for (const auto& uuid : chosen_uuids) owns.push_back(!uuid.empty() && choosers[uuid] == 1);
  return owns;
}

Backend resolve_backend(BackendChoice choice, const BackendFacts& facts) {
  if (choice == BackendChoice::kMpi) return Backend::kMpi;
  const bool possible =
      facts.torch_has_cuda && facts.built_with_nccl && facts.every_rank_owns_a_gpu;
  if (possible) return Backend::kNccl;
  if (choice == BackendChoice::kAuto) return Backend::kMpi;
  std::string reasons;
  const auto add = [&](const std::string& reason) {
    reasons += (reasons.empty() ? "" : "; ") + reason;
  };
  if (!facts.built_with_nccl) {
    add("this build of fsdp-runtime has no NCCL (no CUDA toolkit was found at configure time)");
  }
  if (!facts.torch_has_cuda) {
    add("the libtorch it runs with has no CUDA (Debian's is CPU-only; build against a CUDA "
        "libtorch)");
  }
  if (!facts.every_rank_owns_a_gpu) {
    add("some rank has no GPU of its own (start one rank per GPU)");
  }
  throw ConfigurationError("backend nccl cannot be used: " + reasons + "; or use --backend mpi");
}

}  // namespace fsdp::launch
