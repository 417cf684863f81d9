#!/usr/bin/env bash
# The test command: installs and builds if needed (scripts/setup.sh), then runs
# every test with ctest, including the multi-rank ones (mpirun -np 1..4).
# Extra arguments go to ctest, e.g. scripts/test.sh -L mpi
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cd build
ctest --output-on-failure "$@"
