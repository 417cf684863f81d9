# shard-inspect (see fsdp/launch/shard_inspect_main.cpp): the weight debugger.
# Its logic is a library so that tests call exactly what the program runs.
# It links the MPI-built libraries but never initialises MPI.
add_library(fsdp_inspect fsdp/launch/inspect/command_line.cpp fsdp/launch/inspect/tensor_source.cpp
                         fsdp/launch/inspect/name_filter.cpp fsdp/launch/inspect/slice_spec.cpp
                         fsdp/launch/inspect/statistics_table.cpp fsdp/launch/inspect/parameter_values.cpp
                         fsdp/launch/inspect/placements_view.cpp fsdp/launch/inspect/checkpoint_diff.cpp
                         fsdp/launch/inspect/text_table.cpp)
target_link_libraries(fsdp_inspect PUBLIC fsdp_checkpoint fsdp_models Boost::program_options
                                          nlohmann_json::nlohmann_json)

# In build/bin, beside fsdp-train (CMAKE_RUNTIME_OUTPUT_DIRECTORY).
add_executable(shard-inspect fsdp/launch/shard_inspect_main.cpp)
target_link_libraries(shard-inspect PRIVATE fsdp_inspect)
