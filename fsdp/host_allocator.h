// Which C heap serves this process's host memory, and handing its free pages
// back to the system.
//
// Note [Host allocator]
// ~~~~~~~~~~~~~~~~~~~~~
// On the CPU every tensor is a malloc'd block, and a training step frees its
// activations in another order than it took them. glibc's malloc keeps
// blocks below its mmap threshold (which rises to 32 MiB once such a block
// is freed) in its heaps, so the holes stay resident: measured on the 118 M
// model at 2 ranks, the peak resident set was 175-185 MiB above what the
// same steps need under gperftools' tcmalloc, which keeps large blocks in
// page spans it hands back to the system, and the steps were 3-6% slower
// (docs/PERFORMANCE.md, which also has jemalloc and glibc's fixed mmap
// threshold: both lower the peak as much, but cost 8-16% of tokens/s).
//
// So fsdp-train and fsdp-bench link tcmalloc_minimal (CMake
// FSDP_HOST_ALLOCATOR, default tcmalloc; "system" keeps the C library's, as
// sanitizer builds must). The library itself never replaces malloc: a
// harness chooses for its process -- link tcmalloc_minimal, or start with
// LD_PRELOAD=libtcmalloc_minimal.so.4 -- and what follows adapts to
// whichever is loaded.
#pragma once

#include <string>

namespace fsdp {

// "tcmalloc 2.10 (gperftools)" when tcmalloc serves malloc in this process
// (linked into the program or preloaded), otherwise "glibc malloc" or "the
// C library's malloc".
std::string host_allocator_name();

// Under glibc, hands the free pages its heaps keep back to the system
// (malloc_trim(0)), at the price of page faults when they are used again:
// call it where a peak is about to be reached (Note [Heap trim] in
// multi_stage_model.cpp). Elsewhere nothing: tcmalloc returns free spans to
// the system on its own, and releasing all of them at those points measured
// worse (a 2% higher peak on the 118 M model, docs/PERFORMANCE.md).
void trim_host_heap();

// Hands every free page of the heap back to the system now, whichever
// allocator serves the process (tcmalloc's ReleaseFreeMemory, glibc's
// malloc_trim(0)), so that the resident set is what is in use: for
// measurements (fsdp-bench's step peaks), not for training.
void release_free_host_memory();

}  // namespace fsdp
