#!/usr/bin/env bash
# The installed package, as a harness uses it: `cmake --install` into a fresh
# prefix, examples/harness configured against that prefix alone
# (find_package(fsdp)), built, and run: 10 steps at 2 ranks, resumed to 20 at
# 1 rank, against 20 uninterrupted steps at 2 ranks.
# Usage: package_example.sh SOURCE_DIR BUILD_DIR MPIRUN WORK_DIR
set -euo pipefail
[ $# -eq 4 ] || { echo "usage: $0 SOURCE_DIR BUILD_DIR MPIRUN WORK_DIR (got $# arguments)"; exit 2; }
source=$1 build=$2 mpirun=$3 work=$4
rm -rf "$work" && mkdir -p "$work" && cd "$work"
fail() { echo "FAIL: $*"; exit 1; }

cmake --install "$build" --prefix "$work/prefix" > install.log || { cat install.log; fail "install"; }
[ -f prefix/lib/cmake/fsdp/fsdpConfig.cmake ] || fail "no package config installed"
[ -f prefix/include/fsdp/stages/multi_stage_model.h ] || fail "headers not under include/fsdp"
[ ! -e prefix/include/fsdp/launch/trainer.h ] || fail "fsdp-train's internals were installed"
[ -x prefix/bin/fsdp-train ] && [ -x prefix/bin/shard-inspect ] || fail "programs not installed"

cmake -S "$source/examples/harness" -B harness-build -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_PREFIX_PATH="$work/prefix" -DCMAKE_EXPORT_COMPILE_COMMANDS=ON > configure.log 2>&1 ||
  { cat configure.log; fail "configuring the example"; }
cmake --build harness-build > build.log 2>&1 || { cat build.log; fail "building the example"; }
# It compiled against the installed headers, never the source tree.
grep -q -- "$work/prefix/include" harness-build/compile_commands.json || fail "prefix headers unused"
if grep -q -- "$source/fsdp" harness-build/compile_commands.json; then fail "the source tree leaked in"; fi

losses() { sed -n 's/^step \([0-9]*\) loss \([0-9.e-]*\)$/\1 \2/p' "$1"; }
"$mpirun" -np 2 harness-build/harness --steps 10 --checkpoint run > first.log 2>&1 || { cat first.log; fail "first run"; }
"$mpirun" -np 1 harness-build/harness --steps 20 --checkpoint run --resume > resumed.log 2>&1 ||
  { cat resumed.log; fail "resumed run"; }
"$mpirun" -np 2 harness-build/harness --steps 20 --checkpoint whole > whole.log 2>&1 || { cat whole.log; fail "whole run"; }
cat first.log resumed.log
grep -q "^resumed at step 10 (saved by 2 ranks)" resumed.log || fail "no resume"
losses whole.log | awk '$1 > 10' > whole.txt
losses resumed.log > resumed.txt
[ "$(wc -l < resumed.txt)" -eq 10 ] || fail "the resumed run did not train steps 11-20"
paste whole.txt resumed.txt | awk '
  $1 != $3 { bad = 1 }
  { d = $2 - $4; if (d < 0) d = -d; if (d > 1e-4 * $2 + 1e-7) { print "step", $1, $2, "vs", $4; bad = 1 } }
  END { exit bad }' || fail "resumed at 1 rank, the losses differ from the uninterrupted run"
losses whole.log | awk 'NR == 1 { first = $2 } END { if (!($2 < 0.5 * first)) { print first, "->", $2; exit 1 } }' ||
  fail "the example did not learn"
echo "package example: all checks passed"
