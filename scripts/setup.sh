#!/usr/bin/env bash
# Installs what the project needs and builds it into build/ (executables in build/bin/).
# Idempotent: packages already installed are not fetched again, and the build is incremental.
#
# Dependencies, all Debian packages: libtorch, Open MPI, Boost.Program_options,
# GoogleTest, nlohmann-json, xxHash, CMake, Ninja, iproute2 (the two-host test's
# network namespaces), and OpenBLAS (OpenMP build)
# as the BLAS that libtorch's matrix products call. The interop test needs the
# reference `safetensors` Python package, and the data tests NumPy and
# `tokenizers` (scripts/prepare_data.py), which Debian does not ship: they are
# installed from PyPI into a virtual environment in build/python. CUDA is optional: when nvcc is on
# PATH or in /usr/local/cuda, the CUDA kernels and the NCCL backend are built too.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(cmake ninja-build g++ libtorch-dev libopenmpi-dev openmpi-bin
          libboost-program-options-dev libgtest-dev nlohmann-json3-dev libxxhash-dev
          python3-venv libopenblas0-openmp iproute2)
sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
missing=()
for package in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$package")
  fi
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# Debian's libtorch calls the BLAS through the libblas.so.3 / liblapack.so.3
# alternatives (OpenBLAS's libblas.so.3 then loads libopenblas.so.0, a third
# one), which a fresh machine points at the reference (netlib) BLAS: 12-14x
# slower training. Point them at OpenBLAS's OpenMP build. Not the
# pthreads build, although Debian ranks it higher: its own thread pool fights
# libtorch's OpenMP pool (5x slower at one rank with 2 threads here; equal at
# one thread per rank). docs/PERFORMANCE.md has the comparison with BLIS.
multiarch=$(gcc -print-multiarch)
for library in libblas.so.3 liblapack.so.3 libopenblas.so.0; do
  wanted=/usr/lib/$multiarch/openblas-openmp/$library
  current=$(readlink -f "/usr/lib/$multiarch/$library" || true)
  if [ "$current" != "$(readlink -f "$wanted")" ]; then
    echo "setup: pointing $library at $wanted (was ${current:-nothing})"
    $sudo update-alternatives --quiet --set "$library-$multiarch" "$wanted"
  fi
done

# CMake finds nvcc on PATH; the CUDA toolkit on these machines lives in /usr/local/cuda.
if ! command -v nvcc >/dev/null 2>&1 && [ -x /usr/local/cuda/bin/nvcc ] && [ -z "${CUDACXX:-}" ]; then
  export CUDACXX=/usr/local/cuda/bin/nvcc
fi

# The reference safetensors implementation (the interop test), NumPy and
# tokenizers (the token-file tests and scripts/prepare_data.py).
if [ ! -x build/python/bin/python ] || ! build/python/bin/python -c "import safetensors, numpy, tokenizers" 2>/dev/null; then
  echo "setup: installing the safetensors, numpy and tokenizers Python packages into build/python"
  mkdir -p build
  python3 -m venv build/python
  build/python/bin/pip install --quiet --disable-pip-version-check "safetensors>=0.4" numpy tokenizers
fi

if [ ! -f build/CMakeCache.txt ]; then
  cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release
fi
cmake --build build -j "$(nproc)"

# The check that matters: the BLAS the built programs actually load.
for library in libblas.so.3 libopenblas.so.0; do
  loaded=$(ldd build/bin/fsdp-train | awk -v name="$library" '$1 == name {print $3}')
  if [ -z "$loaded" ] || [[ "$(readlink -f "$loaded")" != */openblas-openmp/* ]]; then
    echo "setup: fsdp-train loads $library from '${loaded:-nowhere}'" \
         "($(readlink -f "$loaded" 2>/dev/null)), not OpenBLAS's OpenMP build;" \
         "see update-alternatives --display $library-$multiarch" >&2
    exit 1
  fi
done
