# fsdp_torch_library_beside_config(): call right after find_package(Torch).
#
# TorchConfig.cmake finds libtorch.so and libc10.so with find_library, which
# searches the system's library directories before the config's own lib/.
# With Debian's libtorch installed, another libtorch (PyPI torch's, found
# through CMAKE_PREFIX_PATH or Torch_DIR) would be compiled with its own
# headers and linked against Debian's libtorch.so and libc10.so. This points
# the imported `torch` target and TORCH_LIBRARIES at the libraries beside the
# config that was found. Used by the build and by the installed package's
# config, whose consumers meet the same pitfall.
macro(fsdp_torch_library_beside_config)
  set(_fsdp_torch_lib "${TORCH_INSTALL_PREFIX}/lib")
  if(EXISTS "${_fsdp_torch_lib}/libtorch.so" AND NOT TORCH_LIBRARY STREQUAL
                                                 "${_fsdp_torch_lib}/libtorch.so")
    message(STATUS "fsdp: linking the libtorch in ${_fsdp_torch_lib}, beside ${Torch_DIR} "
                   "(find_library had taken ${TORCH_LIBRARY} from the system)")
    set_target_properties(torch PROPERTIES IMPORTED_LOCATION "${_fsdp_torch_lib}/libtorch.so")
    set(TORCH_LIBRARY "${_fsdp_torch_lib}/libtorch.so" CACHE FILEPATH
        "libtorch.so beside the TorchConfig.cmake found" FORCE)
  endif()
  if(c10_LIBRARY AND EXISTS "${_fsdp_torch_lib}/libc10.so"
     AND NOT c10_LIBRARY STREQUAL "${_fsdp_torch_lib}/libc10.so")
    list(TRANSFORM TORCH_LIBRARIES REPLACE "^${c10_LIBRARY}$" "${_fsdp_torch_lib}/libc10.so")
    set(c10_LIBRARY "${_fsdp_torch_lib}/libc10.so" CACHE FILEPATH
        "libc10.so beside the TorchConfig.cmake found" FORCE)
  endif()
  # PyPI torch's CUDA libraries load the NCCL and CUDA libraries of the
  # nvidia-* packages installed beside torch, through their own RPATH. The
  # linker must find those too, before a CUDA toolkit's own (older) NCCL,
  # which the toolkit's directory on the link line would otherwise offer:
  # libtorch_cuda.so needs symbols that only the newer NCCL has.
  file(GLOB _fsdp_nvidia_libs LIST_DIRECTORIES true "${TORCH_INSTALL_PREFIX}/../nvidia/*/lib")
  foreach(_fsdp_dir IN LISTS _fsdp_nvidia_libs)
    get_filename_component(_fsdp_dir "${_fsdp_dir}" ABSOLUTE)
    set_property(TARGET torch APPEND PROPERTY INTERFACE_LINK_OPTIONS
                 "LINKER:-rpath-link,${_fsdp_dir}")
  endforeach()
  unset(_fsdp_nvidia_libs)
  unset(_fsdp_dir)
  unset(_fsdp_torch_lib)
endmacro()
