#!/usr/bin/env bash
# The test command: installs and builds if needed (scripts/setup.sh), then runs
# every test with ctest, including the multi-rank ones (mpirun -np 1..4).
# Extra arguments go to ctest, e.g. scripts/test.sh -L mpi
# FSDP_TORCH=pip builds and tests against PyPI torch's libtorch in build-pip/
# instead of Debian's in build/ (scripts/setup.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
if [ "${FSDP_TORCH:-debian}" = pip ]; then cd build-pip; else cd build; fi
ctest --output-on-failure "$@"
