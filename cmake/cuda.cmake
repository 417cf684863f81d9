# Finds the CUDA compiler, the CUDA runtime and NCCL. Sets FSDP_WITH_CUDA and
# FSDP_WITH_NCCL, and defines the imported target fsdp::nccl.
#
# CUDA is optional: without it the project builds and every CPU test runs. With
# it (nvcc on PATH or in /usr/local/cuda, which CMake's CUDA detection searches),
# the kernels and the NCCL backend are compiled even when no GPU is present, so
# compile errors are caught on every machine.
set(FSDP_WITH_CUDA OFF)
set(FSDP_WITH_NCCL OFF)
if(NOT FSDP_ENABLE_CUDA)
  message(STATUS "fsdp: CUDA disabled (FSDP_ENABLE_CUDA=OFF)")
  return()
endif()

include(CheckLanguage)
check_language(CUDA)
if(NOT CMAKE_CUDA_COMPILER)
  message(STATUS "fsdp: no CUDA compiler found; building the host-only runtime")
  return()
endif()

# FSDP_CUDA_ARCHITECTURES (CMakeLists.txt). A CUDA libtorch has already enabled
# CUDA and set CMAKE_CUDA_ARCHITECTURES OFF, putting TORCH_CUDA_ARCH_LIST's
# -gencode flags into CMAKE_CUDA_FLAGS instead (fsdp_torch_cuda_arch_list).
if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES)
  set(CMAKE_CUDA_ARCHITECTURES ${FSDP_CUDA_ARCHITECTURES})
endif()
enable_language(CUDA)
set(CMAKE_CUDA_STANDARD 17)
set(CMAKE_CUDA_STANDARD_REQUIRED ON)
find_package(CUDAToolkit REQUIRED)
set(FSDP_WITH_CUDA ON)

# A PyPI torch loads the NCCL of the nvidia-nccl-* package installed beside it,
# usually newer than the toolkit's: linking the toolkit's fails (libtorch_cuda
# needs symbols only the newer one has) or, worse, loads two NCCLs. That one
# comes first; the package ships only the versioned libnccl.so.2.
set(_fsdp_torch_nccl "")
if(TORCH_INSTALL_PREFIX AND EXISTS "${TORCH_INSTALL_PREFIX}/../nvidia/nccl/include/nccl.h")
  get_filename_component(_fsdp_torch_nccl "${TORCH_INSTALL_PREFIX}/../nvidia/nccl" ABSOLUTE)
endif()
find_path(NCCL_INCLUDE_DIR nccl.h
  HINTS ${NCCL_HOME} $ENV{NCCL_HOME} ${_fsdp_torch_nccl} ${CUDAToolkit_INCLUDE_DIRS}
  PATH_SUFFIXES include)
find_library(NCCL_LIBRARY NAMES nccl libnccl.so.2 NAMES_PER_DIR
  HINTS ${NCCL_HOME} $ENV{NCCL_HOME} ${_fsdp_torch_nccl} ${CUDAToolkit_LIBRARY_DIR}
  PATH_SUFFIXES lib lib64)
unset(_fsdp_torch_nccl)
if(NCCL_INCLUDE_DIR AND NCCL_LIBRARY)
  add_library(fsdp::nccl UNKNOWN IMPORTED)
  set_target_properties(fsdp::nccl PROPERTIES
    IMPORTED_LOCATION ${NCCL_LIBRARY}
    INTERFACE_INCLUDE_DIRECTORIES ${NCCL_INCLUDE_DIR})
  set(FSDP_WITH_NCCL ON)
  message(STATUS "fsdp: CUDA ${CUDAToolkit_VERSION}, NCCL at ${NCCL_LIBRARY}")
else()
  message(STATUS "fsdp: CUDA ${CUDAToolkit_VERSION} without NCCL (set NCCL_HOME); MPI backend only")
endif()
