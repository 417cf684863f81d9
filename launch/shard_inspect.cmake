# shard-inspect (see launch/shard_inspect_main.cpp): the weight debugger.
# Its logic is a library so that tests call exactly what the program runs.
# It links the MPI-built libraries but never initialises MPI.
add_library(fsdp_inspect launch/inspect/command_line.cpp launch/inspect/tensor_source.cpp
                         launch/inspect/name_filter.cpp launch/inspect/slice_spec.cpp
                         launch/inspect/statistics_table.cpp launch/inspect/parameter_values.cpp
                         launch/inspect/placements_view.cpp launch/inspect/checkpoint_diff.cpp
                         launch/inspect/text_table.cpp)
target_link_libraries(fsdp_inspect PUBLIC fsdp_checkpoint fsdp_models Boost::program_options
                                          nlohmann_json::nlohmann_json)

# In build/bin, beside fsdp-train (CMAKE_RUNTIME_OUTPUT_DIRECTORY).
add_executable(shard-inspect launch/shard_inspect_main.cpp)
target_link_libraries(shard-inspect PRIVATE fsdp_inspect)
