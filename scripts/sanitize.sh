#!/usr/bin/env bash
# Builds the runtime with AddressSanitizer and UndefinedBehaviorSanitizer
# (g++, FSDP_SANITIZE=address,undefined) into build-sanitize/ and runs the
# tests that reach the code untrusted input reaches: every unit test (the fuzz
# corpus replays among them), the checkpoint and HF tests, shard-inspect's, and
# the hostile-input suite (shard-inspect and fsdp-train on hostile files).
# Any sanitizer report fails the test it happens in. CI runs it after
# scripts/test.sh. Extra arguments go to ctest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh >/dev/null  # packages, build/python
if [ ! -f build-sanitize/CMakeCache.txt ]; then
  # -O1: sanitized code stays fast enough for the multi-rank tests, and
  # compiles faster than the release build's -O3.
  cmake -S . -B build-sanitize -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -g1" -DFSDP_SANITIZE=address,undefined \
    -DFSDP_BUILD_BENCHMARKS=OFF -DFSDP_ENABLE_CUDA=OFF \
    -DFSDP_PYTHON="$PWD/build/python/bin/python" >/dev/null
fi
# Only what the tests below run: a sanitized build of everything would double
# CI's build time. unit_tests: every unit-labelled test's programs.
reader_tests=(distributed_checkpoint_test hf_import_test shard_inspect_test shard-inspect fsdp-train)
cmake --build build-sanitize -j "$(nproc)" --target unit_tests "${reader_tests[@]}"

# Leaks inside Open MPI and libtorch are theirs (tests/sanitizer/lsan.supp);
# ours are reported. Open MPI's plugins are unloaded before LeakSanitizer
# reports, so their frames only match with full stacks (fast_unwind_on_malloc=0,
# slower: the multi-rank tests run at 1 and 2 ranks here, 1 to 4 in test.sh).
export ASAN_OPTIONS="detect_leaks=1:fast_unwind_on_malloc=0:abort_on_error=1:strict_string_checks=1:detect_stack_use_after_return=1"
export LSAN_OPTIONS="suppressions=$PWD/tests/sanitizer/lsan.supp:print_suppressions=0"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
cd build-sanitize
ctest --output-on-failure -L unit "$@"
ctest --output-on-failure -LE unit \
  -R '^((distributed_checkpoint|hf_import|shard_inspect)_test_np[12]|shard_inspect_.*)$' "$@"
# The hostile-input suite starts the programs some fifty times: with memory
# errors and undefined behaviour caught as above, but without the full-stack
# leak check, whose unwinding of every allocation in libtorch's start-up
# would make each start take minutes (the tests above check leaks).
ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:strict_string_checks=1" \
  ctest --output-on-failure -R '^hostile_inputs$' "$@"
