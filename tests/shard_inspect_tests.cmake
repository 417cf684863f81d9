# shard-inspect's tests: the library on checkpoints saved and exported at
# every world size (sub-communicators give it a second world size), and the
# program's command line itself.
fsdp_add_mpi_test(shard_inspect_test SOURCES shard_inspect_test.cpp
                  LIBS fsdp_inspect fsdp_models torch)

set(inspect $<TARGET_FILE:shard-inspect>)
fsdp_add_program_test(shard_inspect_help EXIT 0 COMMAND ${inspect} --help
                      ONCE "Usage: shard-inspect DIR" OUTPUT "Exit status: 0")
fsdp_add_program_test(shard_inspect_bad_option EXIT 2 COMMAND ${inspect} . --frobnicate
                      ONCE "unrecognised option '--frobnicate'")
fsdp_add_program_test(shard_inspect_bad_value EXIT 2 COMMAND ${inspect} . --diff . --tol -1
                      ONCE "--tol must be a non-negative number")
fsdp_add_program_test(shard_inspect_missing_directory EXIT 3
                      COMMAND ${inspect} ${CMAKE_CURRENT_BINARY_DIR}/no_such_checkpoint
                      ONCE "no_such_checkpoint: no such file or directory")
