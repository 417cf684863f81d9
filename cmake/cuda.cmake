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

# Hopper (H100/H200) by default: the GPUs this project runs on. One architecture
# keeps builds on 2-core machines short; override with -DCMAKE_CUDA_ARCHITECTURES=...
if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES)
  set(CMAKE_CUDA_ARCHITECTURES 90)
endif()
enable_language(CUDA)
set(CMAKE_CUDA_STANDARD 17)
set(CMAKE_CUDA_STANDARD_REQUIRED ON)
find_package(CUDAToolkit REQUIRED)
set(FSDP_WITH_CUDA ON)

find_path(NCCL_INCLUDE_DIR nccl.h
  HINTS ${NCCL_HOME} $ENV{NCCL_HOME} ${CUDAToolkit_INCLUDE_DIRS}
  PATH_SUFFIXES include)
find_library(NCCL_LIBRARY nccl
  HINTS ${NCCL_HOME} $ENV{NCCL_HOME} ${CUDAToolkit_LIBRARY_DIR}
  PATH_SUFFIXES lib lib64)
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
