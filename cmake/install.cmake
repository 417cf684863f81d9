# cmake --install: the headers under include/fsdp/, the libraries, the
# programs, and a CMake package (lib/cmake/fsdp) with namespaced targets.
#
#   find_package(fsdp 0.4 REQUIRED)
#   target_link_libraries(my_harness PRIVATE fsdp::fsdp)
#
# The package finds the runtime's own dependencies (MPI, Torch, Boost,
# nlohmann-json, OpenMP, and CUDA with NCCL when it was built with them), so a
# harness needs nothing else; the tests' dependencies are not among them.
include(CMakePackageConfigHelpers)

# Headers of the libraries, not of the programs' internals (fsdp-train's job,
# shard-inspect's pieces), which are not part of the package.
install(DIRECTORY fsdp/ DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}/fsdp
        FILES_MATCHING PATTERN "*.h"
        PATTERN "launch/inspect" EXCLUDE
        PATTERN "launch/train_options.h" EXCLUDE
        PATTERN "launch/trainer.h" EXCLUDE
        PATTERN "launch/synthetic_data.h" EXCLUDE
        PATTERN "launch/training_data.h" EXCLUDE
        PATTERN "launch/evaluation.h" EXCLUDE)

install(TARGETS fsdp ${FSDP_PACKAGE_LIBRARIES} EXPORT fsdpTargets
        ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
        LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}
        INCLUDES DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(TARGETS fsdp-train shard-inspect RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})

set(FSDP_CONFIG_DIR ${CMAKE_INSTALL_LIBDIR}/cmake/fsdp)
install(EXPORT fsdpTargets NAMESPACE fsdp:: DESTINATION ${FSDP_CONFIG_DIR})
configure_package_config_file(cmake/fsdpConfig.cmake.in
                              ${CMAKE_CURRENT_BINARY_DIR}/fsdpConfig.cmake
                              INSTALL_DESTINATION ${FSDP_CONFIG_DIR})
# 0.x: minor versions may change the API.
write_basic_package_version_file(${CMAKE_CURRENT_BINARY_DIR}/fsdpConfigVersion.cmake
                                 COMPATIBILITY SameMinorVersion)
install(FILES ${CMAKE_CURRENT_BINARY_DIR}/fsdpConfig.cmake
              ${CMAKE_CURRENT_BINARY_DIR}/fsdpConfigVersion.cmake
              cmake/FsdpTorchLibrary.cmake
              cmake/FsdpCudaArchitectures.cmake
        DESTINATION ${FSDP_CONFIG_DIR})
