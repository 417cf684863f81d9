# fsdp_torch_cuda_arch_list(<architectures>): call before find_package(Torch).
#
# A CUDA libtorch's config enables CUDA itself, ignores CMAKE_CUDA_ARCHITECTURES
# (it sets it OFF) and compiles for TORCH_CUDA_ARCH_LIST, whose default on a
# machine without a GPU lists every architecture torch knows, some of which
# newer toolkits reject ("nvcc fatal: Unsupported gpu architecture
# 'compute_50'"). This sets that list from the project's, in torch's spelling
# ("90" -> "9.0", "90a" -> "9.0a"), unless the user set it (variable or
# environment). Debian's CPU-only libtorch never reads it.
function(fsdp_torch_cuda_arch_list architectures)
  if(DEFINED TORCH_CUDA_ARCH_LIST OR DEFINED ENV{TORCH_CUDA_ARCH_LIST})
    return()
  endif()
  set(torch_list "")
  foreach(architecture IN LISTS architectures)
    if(NOT architecture MATCHES "^([0-9]+)([0-9])([a-z]?)$")
      message(FATAL_ERROR "FSDP_CUDA_ARCHITECTURES: expected architectures as "
                          "CMAKE_CUDA_ARCHITECTURES spells them, without -real/-virtual "
                          "(e.g. 90, 90a, 100); found '${architecture}'")
    endif()
    list(APPEND torch_list "${CMAKE_MATCH_1}.${CMAKE_MATCH_2}${CMAKE_MATCH_3}")
  endforeach()
  set(TORCH_CUDA_ARCH_LIST "${torch_list}" PARENT_SCOPE)
endfunction()
