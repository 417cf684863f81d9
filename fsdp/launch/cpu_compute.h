// CPU compute: which BLAS answers libtorch's matrix products in this process,
// and how many threads each rank computes with.
//
// Why it matters: Debian's libtorch calls the BLAS through `libblas.so.3`, an
// alternatives link that a fresh machine points at the *reference* (netlib)
// BLAS, unoptimised Fortran that made training 12-14x slower. And OpenMP
// (libtorch's intra-op pool) and a pthreads BLAS keep separate thread pools:
// setting one and not the other puts 2 ranks x 2 threads on 2 cores.
//
//   const BlasLibrary blas = find_blas();
//   set_compute_threads(runtime.compute_threads());   // once, before any compute
//   std::cout << describe_compute(blas) << "\n";
//   if (!blas.optimised) std::cerr << reference_blas_warning(blas);
#pragma once

#include <string>

namespace fsdp::launch {

struct BlasLibrary {
  // "OpenBLAS 0.3.21", "BLIS 0.9.0", "Intel MKL ...", "reference BLAS (netlib)",
  // or "unidentified BLAS".
  std::string name;
  // What the library says of its build: "openmp, core Zen"; empty when it says nothing.
  std::string build;
  // The shared object that defines sgemm_ (symlinks resolved), or libtorch's
  // own BLAS when it is linked in statically ("built into libtorch").
  std::string path;
  // True for OpenBLAS, BLIS and MKL; false for the reference BLAS and for a
  // library we cannot identify (we would rather warn than claim it is fast).
  bool optimised = false;
};

// Finds the BLAS that libtorch's CPU matrix products call in this process.
// Never throws: a library it cannot identify is reported as such.
BlasLibrary find_blas();

// Sets the number of threads this rank computes with, the same for OpenMP
// (libtorch's intra-op pool, which the OpenMP builds of OpenBLAS and BLIS
// follow) and for the BLAS's own pool (pthreads builds). Call once per
// process, before any compute. REQUIRES: threads >= 1.
void set_compute_threads(int threads);

// Threads as each pool reports them now: OpenMP's and the BLAS's (-1 when the
// BLAS has no pool of its own or does not say).
struct ComputeThreads {
  int openmp = 1;
  int blas = -1;
};
ComputeThreads current_compute_threads();

// One line for banners: "BLAS OpenBLAS 0.3.21 (openmp, core Zen), 1 compute
// thread per rank (OpenMP 1, BLAS 1); host allocator tcmalloc 2.10
// (gperftools)" (fsdp/host_allocator.h).
std::string describe_compute(const BlasLibrary& blas);

// A loud multi-line warning for a BLAS that is not optimised, saying what it
// costs and how to fix it; empty when `blas.optimised`.
std::string reference_blas_warning(const BlasLibrary& blas);

}  // namespace fsdp::launch
