// shard-inspect: the weight debugger. Reads distributed checkpoints and HF
// safetensors checkpoints without MPI or a GPU; see `shard-inspect --help`
// and launch/inspect/.
#include <iostream>
#include <string>
#include <vector>

#include "fsdp/launch/inspect/command_line.h"

int main(int argc, char** argv) {
  const std::vector<std::string> arguments(argv + 1, argv + argc);
  return fsdp::inspect::run_shard_inspect(arguments, std::cout, std::cerr);
}
