// The BLAS that libtorch's matrix products call, and the threads each rank
// computes with. scripts/setup.sh points libblas.so.3 at OpenBLAS (OpenMP
// build); these tests check that the programs really load it and that one
// call sets OpenMP's and the BLAS's thread counts alike.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "fsdp/launch/cpu_compute.h"

namespace fsdp::launch {
namespace {

TEST(CpuCompute, FindsTheOptimisedBlasThatSetupInstalls) {
  const BlasLibrary blas = find_blas();
  EXPECT_TRUE(blas.optimised) << blas.name << " from " << blas.path;
  EXPECT_TRUE(reference_blas_warning(blas).empty());
  if (blas.path.find("libtorch") != std::string::npos) {
    // PyPI torch's libtorch carries its BLAS (MKL) inside libtorch_cpu.so:
    // setup's alternatives do not apply, and the library must be named as such.
    EXPECT_NE(blas.name.find("Math Kernel Library"), std::string::npos) << blas.name;
    return;
  }
  EXPECT_NE(blas.name.find("OpenBLAS"), std::string::npos) << blas.name;
  EXPECT_NE(blas.path.find("openblas-openmp"), std::string::npos) << blas.path;
  EXPECT_NE(blas.build.find("openmp"), std::string::npos) << blas.build;
}

TEST(CpuCompute, OneCallSetsOpenMpAndBlasThreadsAlike) {
  for (const int threads : {2, 1}) {
    set_compute_threads(threads);
    const ComputeThreads now = current_compute_threads();
    EXPECT_EQ(now.openmp, threads);
    EXPECT_EQ(now.blas, threads);
  }
  const std::string line = describe_compute(find_blas());
  EXPECT_NE(line.find("1 compute thread per rank (OpenMP 1, BLAS 1)"), std::string::npos) << line;
}

TEST(CpuCompute, RefusesZeroThreads) {
  EXPECT_THROW(set_compute_threads(0), std::invalid_argument);
}

TEST(CpuCompute, WarnsLoudlyAboutTheReferenceBlas) {
  BlasLibrary reference;
  reference.name = "reference BLAS (netlib)";
  reference.path = "/usr/lib/x86_64-linux-gnu/blas/libblas.so.3.11.0";
  const std::string warning = reference_blas_warning(reference);
  EXPECT_NE(warning.find("WARNING"), std::string::npos);
  EXPECT_NE(warning.find(reference.path), std::string::npos);
  EXPECT_NE(warning.find("scripts/setup.sh"), std::string::npos);
}

TEST(CpuCompute, MatrixProductsThroughTheBlasAreRight) {
  // Integer-valued operands: the product is exact in float32 whatever the kernel.
  const at::Tensor a = at::arange(64 * 48, at::kFloat).remainder(7).reshape({64, 48});
  const at::Tensor b = at::arange(48 * 32, at::kFloat).remainder(5).reshape({48, 32});
  const at::Tensor expected = at::matmul(a.to(at::kLong), b.to(at::kLong)).to(at::kFloat);
  EXPECT_TRUE(at::equal(at::matmul(a, b), expected));
}

}  // namespace
}  // namespace fsdp::launch
