#include "fsdp/host_allocator.h"

#include <cstdlib>  // defines __GLIBC__ where glibc is the C library

#if defined(__GLIBC__)
#include <malloc.h>  // malloc_trim
#endif

// gperftools' C entry points (gperftools/tcmalloc.h, malloc_extension_c.h),
// declared weak: null unless tcmalloc is in the process.
extern "C" {
const char* tc_version(int* major, int* minor, const char** patch) __attribute__((weak));
void MallocExtension_ReleaseFreeMemory() __attribute__((weak));
}

namespace fsdp {

std::string host_allocator_name() {
  if (tc_version != nullptr) {
    int major = 0, minor = 0;
    const char* patch = nullptr;
    tc_version(&major, &minor, &patch);
    return "tcmalloc " + std::to_string(major) + "." + std::to_string(minor) +
           (patch != nullptr ? patch : "") + " (gperftools)";
  }
#if defined(__GLIBC__)
  return "glibc malloc";
#else
  return "the C library's malloc";
#endif
}

void trim_host_heap() {
  if (tc_version != nullptr) return;
#if defined(__GLIBC__)
  malloc_trim(0);
#endif
}

void release_free_host_memory() {
  if (MallocExtension_ReleaseFreeMemory != nullptr) {
    MallocExtension_ReleaseFreeMemory();
    return;
  }
#if defined(__GLIBC__)
  malloc_trim(0);
#endif
}

}  // namespace fsdp
