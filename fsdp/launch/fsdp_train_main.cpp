// fsdp-train: trains the reference model with sharded weights.
//
//   mpirun -np 4 build/bin/fsdp-train            # the demo: ~2 minutes on 2 cores
//   mpirun -np 2 build/bin/fsdp-train --resume   # continue from its checkpoint
//
// The options are in fsdp/launch/train_options.h, the job in fsdp/launch/trainer.h.
#include <iostream>

#include "fsdp/launch/program.h"
#include "fsdp/launch/trainer.h"

namespace po = boost::program_options;

int main(int argc, char** argv) {
  fsdp::launch::ProgramInfo info;
  info.name = "fsdp-train";
  info.summary =
      "trains a Llama-style model (dense, mixture of experts, or stacked layers) with its "
      "weights sharded over the ranks";
  info.usage = "mpirun -np N fsdp-train [options]";
  info.epilog = R"(
With no options: the demo. A 4-layer mixture-of-experts model learns synthetic
sequences for 300 steps (about two minutes at -np 4 on 2 cores), printing a
line every 10 steps and saving a checkpoint in ./fsdp-train-checkpoint every
100 steps and at the end.

Examples:
  mpirun -np 4 fsdp-train                                   # the demo
  shard-inspect fsdp-train-checkpoint                       # what it saved
  mpirun -np 2 fsdp-train --steps 400 --resume              # 100 more steps, at another world size
  mpirun -np 4 fsdp-train --export-hf hf-model              # also write the HF layout
  mpirun -np 3 fsdp-train --init-from-hf hf-model --checkpoint-dir run2
  mpirun -np 2 fsdp-train --model dense --inspect decoder.0.attention.qkv.weight
  mpirun -np 4 fsdp-train --init-from-hf MODEL --data train.npy --eval-data val.npy \
      --eval-interval 50 --seq-len 512         # your own tokens (scripts/prepare_data.py)

--batch is the global batch: the same --seed gives the same losses at every
world size that divides it (the default, 24, divides by 1, 2, 3 and 4).
)";
  info.preflight = [](const po::variables_map& values, int world_size) {
    fsdp::launch::preflight_training(fsdp::launch::train_options_from(values, world_size));
  };
  return fsdp::launch::run_program(
      argc, argv, info, fsdp::launch::train_options_description(),
      [](fsdp::launch::Runtime& runtime, const po::variables_map& values) {
        return fsdp::launch::run_training(
            runtime, fsdp::launch::train_options_from(values, runtime.world_size()), std::cout);
      });
}
