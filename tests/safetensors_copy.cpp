// safetensors_copy IN OUT: reads every tensor of IN with this project's
// reader and writes them to OUT with its writer (metadata kept). The Python
// interop test (safetensors_interop.py) feeds it files written by the
// reference `safetensors` package and reads its output back with that package.
#include <iostream>
#include <memory>
#include <vector>

#include "fsdp/checkpoint/checkpoint_error.h"
#include "fsdp/checkpoint/safetensors_file.h"

int main(int argc, char** argv) {
  using namespace fsdp::checkpoint;
  if (argc != 3) {
    std::cerr << "usage: safetensors_copy IN OUT\n";
    return 2;
  }
  try {
    SafetensorsFile input(argv[1]);
    std::vector<TensorDeclaration> declarations;
    for (const auto& entry : input.tensors())
      declarations.push_back({entry.name, entry.dtype, entry.shape});
    SafetensorsWriter writer(argv[2], declarations, input.metadata());
    for (const auto& entry : writer.tensors_in_file_order()) {
      const auto& source = input.tensor(entry.name);
      std::unique_ptr<char[]> bytes(new char[static_cast<std::size_t>(source.bytes()) + 1]);
      input.read_tensor_bytes(source, 0, bytes.get(), source.bytes());
      writer.append(bytes.get(), source.bytes());
    }
    writer.finish();
  } catch (const CheckpointError& error) {
    std::cerr << "safetensors_copy: " << error.what() << "\n";
    return 1;
  }
  return 0;
}
