# Whole-program tests: fsdp-train at every world size, its options, and what
# happens when a rank fails. Each runs through expect_command.cmake, which
# also fails the test on a hang.
add_executable(failure-probe failure_probe.cpp)
target_link_libraries(failure-probe PRIVATE fsdp_launch)
set_target_properties(failure-probe PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR}/tests)

function(fsdp_add_program_test name)
  cmake_parse_arguments(ARG "" "EXIT;OUTPUT;ONCE;FORBID;TIMEOUT" "COMMAND" ${ARGN})
  if(NOT ARG_TIMEOUT)
    set(ARG_TIMEOUT 120)
  endif()
  # The command travels as one argument, its words joined by "@@" (a plain
  # ";" would split the -D argument, and "\;" reaches the script escaped).
  string(REPLACE ";" "@@" command "${ARG_COMMAND}")
  add_test(NAME ${name}
           COMMAND ${CMAKE_COMMAND} "-DCOMMAND=${command}" -DEXPECT_EXIT=${ARG_EXIT}
                   "-DEXPECT_OUTPUT=${ARG_OUTPUT}" "-DEXPECT_ONCE=${ARG_ONCE}"
                   "-DFORBID_OUTPUT=${ARG_FORBID}" -DTIMEOUT=${ARG_TIMEOUT}
                   -P ${CMAKE_CURRENT_SOURCE_DIR}/expect_command.cmake)
  set_tests_properties(${name} PROPERTIES LABELS program TIMEOUT 300)
endfunction()

set(train $<TARGET_FILE:fsdp-train>)
set(probe $<TARGET_FILE:failure-probe>)

# fsdp-train, short runs of the demo model at every world size (the full demo
# is README's walkthrough, exercised by train_walkthrough below with fewer steps).
set(train_dir ${CMAKE_CURRENT_BINARY_DIR}/train)
foreach(ranks 1 2 3 4)
  fsdp_add_program_test(train_np${ranks} EXIT 0 TIMEOUT 240
                        COMMAND ${FSDP_MPIRUN} -np ${ranks} ${train} --steps 12 --log-interval 4
                                --checkpoint-dir ${train_dir}/np${ranks}
                                --inspect decoder.0.mlp.experts.gate_up_proj
                        OUTPUT "step 12/12  loss [0-9.]+  aux [0-9.]+  expert load [0-9.]+  lr .* tokens/s  elapsed .*  left 0:00.*saved checkpoint at step 12.*inspect decoder.0.mlp.experts.gate_up_proj .*numel 131072 .*done: steps 1-12"
                        ONCE "step 4/12")
endforeach()
fsdp_add_program_test(train_without_mpirun EXIT 0 TIMEOUT 240
                      COMMAND ${train} --model dense --steps 3 --no-checkpoint --dtype bfloat16 --zero-stage 1
                      OUTPUT "1 rank on 1 host.*dense preset.*ZeRO-1, compute bfloat16.*done: steps 1-3")
fsdp_add_program_test(train_stacked_prefetch_np2 EXIT 0 TIMEOUT 240
                      COMMAND ${FSDP_MPIRUN} -np 2 ${train} --model stacked --steps 3 --no-checkpoint
                              --prefetch --shared-weight-buffers 2 --shared-gradient-buffers 2 --micro-batches 2
                      OUTPUT "stacked layers.*prefetch.*2 micro-batch.*done: steps 1-3")
fsdp_add_program_test(train_checkpointing_no_heap_trim_np2 EXIT 0 TIMEOUT 240
                      COMMAND ${FSDP_MPIRUN} -np 2 ${train} --model dense --steps 3 --no-checkpoint
                              --activation-checkpointing layers --no-heap-trim
                      OUTPUT "ZeRO-3.*no heap trim, activation checkpointing layers.*done: steps 1-3")
fsdp_add_program_test(train_asynchronous_reduction_np2 EXIT 0 TIMEOUT 240
                      COMMAND ${FSDP_MPIRUN} -np 2 ${train} --model dense --steps 3 --no-checkpoint
                              --prefetch --asynchronous-reduction --micro-batches 2
                      OUTPUT "2 shared gradient buffers, prefetch, asynchronous reduction,.*done: steps 1-3")

# Options: help once, bad values once with exit status 2, on every world size.
fsdp_add_program_test(train_help EXIT 0 COMMAND ${FSDP_MPIRUN} -np 2 ${train} --help
                      OUTPUT "--init-from-hf.*Examples:"
                      ONCE "Usage: mpirun -np N fsdp-train")
fsdp_add_program_test(train_bad_option EXIT 2 COMMAND ${FSDP_MPIRUN} -np 3 ${train} --dtype int8
                      ONCE "--dtype int8 \\(expected float32 or bfloat16\\)")
fsdp_add_program_test(train_asynchronous_reduction_zero_one EXIT 2
                      COMMAND ${FSDP_MPIRUN} -np 2 ${train} --zero-stage 1 --asynchronous-reduction
                      ONCE "asynchronous reduction needs --zero-stage 2 or 3")
fsdp_add_program_test(train_batch_does_not_split EXIT 2
                      COMMAND ${FSDP_MPIRUN} -np 4 ${train} --batch 30
                      ONCE "--batch 30 \\(the global batch must split evenly: 4 ranks x 1 micro-batches do not divide it\\)")
fsdp_add_program_test(train_nan_learning_rate EXIT 2 COMMAND ${FSDP_MPIRUN} -np 2 ${train} --min-lr nan
                      ONCE "--min-lr nan \\(expected a finite number between 0 and --lr\\)")
fsdp_add_program_test(train_huge_micro_batches EXIT 2
                      COMMAND ${FSDP_MPIRUN} -np 4 ${train} --micro-batches 4611686018427387904
                      ONCE "--batch 24 \\(the global batch must split evenly")
fsdp_add_program_test(train_bad_checkpointing EXIT 2
                      COMMAND ${FSDP_MPIRUN} -np 2 ${train} --activation-checkpointing every-2
                      ONCE "--activation-checkpointing every-2 \\(expected none, stages or layers\\)")
fsdp_add_program_test(train_negative_router_coefficient EXIT 2
                      COMMAND ${FSDP_MPIRUN} -np 2 ${train} --router-z-loss-coef -0.5
                      ONCE "--router-z-loss-coef -0.5 \\(expected a coefficient of 0 or more, or -1 for the model's own\\)")
fsdp_add_program_test(train_router_loss_without_experts EXIT 2
                      COMMAND ${FSDP_MPIRUN} -np 2 ${train} --model dense --router-aux-loss-coef 0.01
                      ONCE "--router-aux-loss-coef 0.01 \\(the model has no experts, so no router to balance\\)")
# Checkpointing and the router losses in a whole run: the banner says them,
# the progress lines and the summary report the load apart from the loss.
fsdp_add_program_test(train_checkpointing_router_losses_np2 EXIT 0 TIMEOUT 240
                      COMMAND ${FSDP_MPIRUN} -np 2 ${train} --steps 4 --log-interval 2 --no-checkpoint
                              --activation-checkpointing layers --router-z-loss-coef 0.001 --prefetch
                      OUTPUT "router losses: load balancing x 0.01, z-loss x 0.001.*activation checkpointing layers.*activations about [0-9.]+ MiB per micro-batch \\(estimate\\).*step 4/4  loss [0-9.]+  aux 0.0[0-9]+  expert load [0-9.]+  lr.*experts: load \\(max / mean tokens per expert\\) over the last 4 steps [0-9.]+ in the worst layer")
fsdp_add_program_test(train_stray_argument EXIT 2
                      COMMAND ${FSDP_MPIRUN} -np 2 ${train} --steps 5 oops
                      ONCE "unexpected argument 'oops' \\(fsdp-train takes only options\\)"
                      FORBID "step 1/")
fsdp_add_program_test(train_timeout_out_of_range EXIT 2
                      COMMAND ${FSDP_MPIRUN} -np 2 ${train} --collective-timeout 1e19
                      ONCE "--collective-timeout 1e\\+19 \\(expected a number of seconds from 0.001 to 1000000\\)")
file(MAKE_DIRECTORY ${train_dir}/with_user_files)
file(WRITE ${train_dir}/with_user_files/eval.txt "results of my own")
fsdp_add_program_test(train_checkpoint_dir_with_user_files EXIT 2
                      COMMAND ${FSDP_MPIRUN} -np 2 ${train} --checkpoint-dir ${train_dir}/with_user_files
                      ONCE "with_user_files holds files this runtime did not write \\(eval.txt\\)"
                      FORBID "step 1/")
fsdp_add_program_test(train_stop_after_without_checkpoint EXIT 2
                      COMMAND ${FSDP_MPIRUN} -np 2 ${train} --stop-after 5 --no-checkpoint
                      ONCE "--stop-after saves a checkpoint to resume from")
fsdp_add_program_test(train_unknown_parameter EXIT 2
                      COMMAND ${FSDP_MPIRUN} -np 2 ${train} --inspect decoder.9.weight
                      ONCE "--inspect decoder.9.weight: the model has no such parameter")
fsdp_add_program_test(train_resume_without_checkpoint EXIT 2
                      COMMAND ${FSDP_MPIRUN} -np 2 ${train} --resume --checkpoint-dir ${train_dir}/none
                      ONCE "${train_dir}/none: no such checkpoint directory")
fsdp_add_program_test(train_nccl_without_gpu EXIT nonzero
                      COMMAND ${FSDP_MPIRUN} -np 2 ${train} --backend nccl
                      OUTPUT "backend nccl")

# One rank's failure ends the whole job with its message, never a hang.
fsdp_add_program_test(rank_failure_aborts_job EXIT nonzero TIMEOUT 60
                      COMMAND ${FSDP_MPIRUN} -np 3 ${probe} --throw-on-rank 1
                      OUTPUT "rank 1/3 on .* fatal: failure-probe: checkpoint shard 'model-00002.safetensors' is truncated"
                      FORBID "rank 0 finished")
fsdp_add_program_test(preflight_peer_times_out EXIT nonzero TIMEOUT 60
                      COMMAND ${FSDP_MPIRUN} -np 2 ${probe} --stall-preflight-on-rank 1 --collective-timeout 2
                      OUTPUT "failure-probe: preflight: the ranks did not all arrive within 2.0+ s")
# A rank stopped before MPI_Init: the others wait in MPI_Init or the topology
# exchange, which have no timeout of their own (deadline_watchdog.h).
fsdp_add_program_test(launch_peer_times_out EXIT nonzero TIMEOUT 60
                      COMMAND ${FSDP_MPIRUN} -np 2 ${probe} --stall-launch-on-rank 1 --collective-timeout 2
                      OUTPUT "fatal: MPI bootstrap \\(MPI_Init and the topology exchange\\) did not finish within 2.0 s")
fsdp_add_program_test(missing_peer_times_out EXIT nonzero TIMEOUT 60
                      COMMAND ${FSDP_MPIRUN} -np 2 ${probe} --skip-on-rank 1 --collective-timeout 2
                      OUTPUT "all_reduce\\(sum\\) of 1 int32 on rank 0/2 .* did not complete within 2")

if(TARGET fsdp-bench)  # FSDP_BUILD_BENCHMARKS
  # The benchmark program keeps working and keeps its --json contract (case,
  # bytes, ranks, ratio on every line). Timing itself is never asserted.
  fsdp_add_program_test(bench_json_smoke EXIT 0
                        COMMAND ${FSDP_MPIRUN} -np 2 $<TARGET_FILE:fsdp-bench> --sizes-mib 0.25,1 --iterations 2 --warmup 1 --json
                        OUTPUT "\"blas_optimised\":true.*\"case\":\"restore\".*\"ratio\":.*\"case\":\"reduce\""
                        ONCE "\"bytes\":262144,\"case\":\"reduce\",\"dtype\":\"float32\".*\"ranks\":2")
  # The load case on a tiny generated checkpoint (a few MB), under its own
  # directory in the build tree: the same contract, plus its own figures.
  fsdp_add_program_test(bench_load_json_smoke EXIT 0 TIMEOUT 60
                        COMMAND ${FSDP_MPIRUN} -np 2 $<TARGET_FILE:fsdp-bench> --case load --load-hidden 64 --load-experts 4 --load-layers 2 --iterations 2 --load-dir ${CMAKE_CURRENT_BINARY_DIR} --json
                        OUTPUT "\"bytes_read_ratio\":.*\"rss_ratio\":"
                        ONCE "\"bytes\":[0-9]+,.*\"case\":\"load\".*\"ranks\":2,\"ratio\":")
  # The same with Mixtral's names (block_sparse_moe.experts.{e}.w1/w3/w2).
  fsdp_add_program_test(bench_load_mixtral_json_smoke EXIT 0 TIMEOUT 60
                        COMMAND ${FSDP_MPIRUN} -np 2 $<TARGET_FILE:fsdp-bench> --case load --load-layout mixtral --load-hidden 64 --load-experts 4 --load-layers 2 --iterations 2 --load-dir ${CMAKE_CURRENT_BINARY_DIR} --json
                        OUTPUT "\"bytes_read_ratio\":1\\.0.*\"layout\":\"mixtral\"")
endif()

# fsdp-train across runs: resume gives the uninterrupted run's losses; world
# sizes 2 and 3 agree (losses and, through shard-inspect --diff, weights).
add_test(NAME train_consistency
         COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/train_consistency.sh ${FSDP_MPIRUN}
                 $<TARGET_FILE:fsdp-train> $<TARGET_FILE:shard-inspect>
                 ${CMAKE_CURRENT_BINARY_DIR}/train_consistency)
set_tests_properties(train_consistency PROPERTIES LABELS program TIMEOUT 600)

if(TARGET fsdp-bench)
  # README's walkthrough, every command, with fewer steps.
  add_test(NAME readme_walkthrough
           COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/readme_walkthrough.sh ${FSDP_MPIRUN}
                   $<TARGET_FILE:fsdp-train> $<TARGET_FILE:shard-inspect> $<TARGET_FILE:fsdp-bench>
                   ${FSDP_PYTHON} ${CMAKE_CURRENT_BINARY_DIR}/readme_walkthrough)
  set_tests_properties(readme_walkthrough PROPERTIES LABELS program TIMEOUT 600)
endif()

# fsdp-train on real HF models: the model comes from config.json alone; a size
# option that disagrees with it is refused, naming both values.
set(hf_fixtures ${PROJECT_SOURCE_DIR}/tests/fixtures/hf)
fsdp_add_program_test(train_hf_mixtral_export EXIT 0 TIMEOUT 120
                      COMMAND ${FSDP_MPIRUN} -np 2 ${train} --init-from-hf ${hf_fixtures}/mixtral
                              --steps 2 --seq-len 16 --batch 4 --no-checkpoint
                              --export-hf ${CMAKE_CURRENT_BINARY_DIR}/train_hf_mixtral_export
                      OUTPUT "model: mixtral from .*heads 4 \\(2 kv\\), 4 experts.*exported the model as mixtral \\(bfloat16\\)")
fsdp_add_program_test(train_hf_size_flag_disagrees EXIT 2
                      COMMAND ${FSDP_MPIRUN} -np 2 ${train} --init-from-hf ${hf_fixtures}/qwen3 --hidden 32
                      OUTPUT "hidden.*32.*hidden_size = 64"
                      FORBID "step 1/")
fsdp_add_program_test(train_hf_sequence_too_long EXIT 2
                      COMMAND ${FSDP_MPIRUN} -np 2 ${train} --init-from-hf ${hf_fixtures}/qwen3 --seq-len 100
                      OUTPUT "seq-len.*100.*max_position_embeddings = 64")

# fsdp-train on token files written by NumPy: the same batches and validation
# losses at every world size, exact resume across epochs, bad data refused.
add_test(NAME train_data
         COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/train_data.sh ${FSDP_MPIRUN}
                 $<TARGET_FILE:fsdp-train> ${FSDP_PYTHON} ${CMAKE_CURRENT_BINARY_DIR}/train_data)
set_tests_properties(train_data PROPERTIES LABELS program TIMEOUT 600)

# README's "Train on your own text": scripts/prepare_data.py, then fine-tuning
# an HF model on its token files with a falling validation loss.
add_test(NAME prepare_and_train
         COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/prepare_and_train.sh ${FSDP_MPIRUN}
                 $<TARGET_FILE:fsdp-train> ${FSDP_PYTHON} ${PROJECT_SOURCE_DIR}
                 ${CMAKE_CURRENT_BINARY_DIR}/prepare_and_train)
set_tests_properties(prepare_and_train PROPERTIES LABELS program TIMEOUT 300)

# The installed package: cmake --install, the out-of-tree example harness built
# against it with find_package(fsdp) alone, trained, saved and resumed at
# another world size.
add_test(NAME package_example
         COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/package_example.sh ${PROJECT_SOURCE_DIR}
                 ${PROJECT_BINARY_DIR} ${FSDP_MPIRUN} ${CMAKE_CURRENT_BINARY_DIR}/package_example)
set_tests_properties(package_example PROPERTIES LABELS program TIMEOUT 600)

# The runtime pulled into a harness with add_subdirectory: targets, and nothing
# global (configured only; the package_example test builds and runs).
add_test(NAME subdirectory_consumer
         COMMAND ${CMAKE_COMMAND} -S ${CMAKE_CURRENT_SOURCE_DIR}/subdirectory_consumer
                 -B ${CMAKE_CURRENT_BINARY_DIR}/subdirectory_consumer -G Ninja
                 -DFSDP_SOURCE_DIR=${PROJECT_SOURCE_DIR})
set_tests_properties(subdirectory_consumer PROPERTIES LABELS program TIMEOUT 300
                     PASS_REGULAR_EXPRESSION "subdirectory consumer: fsdp::fsdp and nothing global")

# Every refusal the readers promise, against the programs: hostile files,
# traversal, FIFOs, numbers out of range, outputs holding a user's files
# (tests/hostile_inputs.py prints the table of outcomes).
add_test(NAME hostile_inputs
         COMMAND ${FSDP_PYTHON} ${CMAKE_CURRENT_SOURCE_DIR}/hostile_inputs.py
                 $<TARGET_FILE_DIR:fsdp-train> ${FSDP_MPIRUN} ${CMAKE_CURRENT_BINARY_DIR}/hostile_inputs)
set_tests_properties(hostile_inputs PROPERTIES LABELS program PROCESSORS 2 TIMEOUT 900)

# Stopping on a signal or a time limit, with a checkpoint, and resuming exactly.
add_test(NAME train_stop
         COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/train_stop.sh ${FSDP_MPIRUN}
                 $<TARGET_FILE:fsdp-train> $<TARGET_FILE:shard-inspect>
                 ${CMAKE_CURRENT_BINARY_DIR}/train_stop)
set_tests_properties(train_stop PROPERTIES LABELS program PROCESSORS 2 TIMEOUT 600)

# A series of checkpoints: retention, resuming, and SIGKILLs during saves.
add_test(NAME train_series
         COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/train_series.sh ${FSDP_MPIRUN}
                 $<TARGET_FILE:fsdp-train> $<TARGET_FILE:shard-inspect>
                 ${CMAKE_CURRENT_BINARY_DIR}/train_series)
set_tests_properties(train_series PROPERTIES LABELS program PROCESSORS 2 TIMEOUT 900)

# Two hosts made of network namespaces, ranks over TCP: the one-host losses,
# and a checkpoint saved and resumed across them (root only; skipped otherwise).
add_test(NAME two_hosts
         COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/two_hosts.sh ${FSDP_MPIRUN}
                 $<TARGET_FILE:fsdp-train> ${CMAKE_CURRENT_BINARY_DIR}/two_hosts)
set_tests_properties(two_hosts PROPERTIES LABELS program PROCESSORS 2 TIMEOUT 300
                                          SKIP_RETURN_CODE 77)
