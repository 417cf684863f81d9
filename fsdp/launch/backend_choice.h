// Which collective backend a job uses, decided from facts every rank can
// gather: whether libtorch can put tensors on CUDA, whether this build has
// NCCL, and whether every rank has a GPU of its own. Pure logic, without
// CUDA or MPI, so that it is tested with made-up device tables; the runtime
// (runtime.h) gathers the facts.
//
// "A GPU of its own" compares device UUIDs across the ranks of a node, not
// device counts with rank counts: under SLURM's --gpus-per-task or a per-rank
// CUDA_VISIBLE_DEVICES every rank sees one device, device 0, and each is a
// different GPU; two ranks sharing one GPU see the same UUID (NCCL refuses
// them: "Duplicate GPU detected").
#pragma once

#include <string>
#include <vector>

namespace fsdp::launch {

enum class BackendChoice {
  kAuto,  // NCCL when libtorch has CUDA, this build has NCCL and every rank has a GPU of its own
  kMpi,   // never touches CUDA (no context is created)
  kNccl,  // an error when NCCL cannot be used, saying why
};

enum class Backend { kMpi, kNccl };

// The device a rank binds among the `visible_devices` it sees: its local rank
// modulo their number; -1 when it sees none.
int chosen_device(int local_rank, int visible_devices);

// For the ranks of one node in local-rank order, each one's chosen device's
// UUID ("" for none): whether that device is its own (no other rank of the
// node chose the same GPU).
std::vector<bool> owns_chosen_device(const std::vector<std::string>& chosen_uuids);

struct BackendFacts {
  bool torch_has_cuda = false;
  bool built_with_nccl = false;
  bool every_rank_owns_a_gpu = false;
};

// The backend `choice` resolves to. Throws ConfigurationError (fsdp/errors.h)
// for kNccl when NCCL cannot be used, naming every reason.
Backend resolve_backend(BackendChoice choice, const BackendFacts& facts);

}  // namespace fsdp::launch
