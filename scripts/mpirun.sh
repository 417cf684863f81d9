#!/usr/bin/env bash
# mpirun as this project runs it: --oversubscribe (more ranks than cores is
# normal on the 2-core CI machines), and --allow-run-as-root only when running
# as root (containers). Everything else is passed through:
#   scripts/mpirun.sh -np 4 build/bin/fsdp-train
set -euo pipefail
flags=(--oversubscribe)
if [ "$(id -u)" -eq 0 ]; then
  flags+=(--allow-run-as-root)
fi
exec "${MPIEXEC:-mpirun}" "${flags[@]}" "$@"
