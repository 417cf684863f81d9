// Compiled into the programs (fsdp-train, fsdp-bench) when CMake's
// FSDP_HOST_ALLOCATOR is tcmalloc: one strong reference to the library, so
// that the linker, which drops libraries nothing refers to (--as-needed),
// keeps libtcmalloc_minimal -- which then serves the whole process's malloc
// (Note [Host allocator] in fsdp/host_allocator.h).
#include <gperftools/tcmalloc.h>

namespace fsdp::launch {

extern const void* const kTcmallocLinked;
const void* const kTcmallocLinked = reinterpret_cast<const void*>(&tc_version);

}  // namespace fsdp::launch
