#!/usr/bin/env bash
# Installs what the project needs and builds it into build/ (executables in build/bin/).
# Idempotent: packages already installed are not fetched again, and the build is incremental.
#
# FSDP_TORCH chooses the libtorch:
#   debian (default)  Debian's libtorch 1.13 (CPU only), into build/;
#   pip               PyPI torch 2.x's bundled libtorch (the CUDA build that GPU
#                     users have; its CPU path runs here), into build-pip/. The
#                     torch wheel and its nvidia-* packages (several GB) go into
#                     a virtual environment kept across clones, in
#                     $FSDP_TORCH_VENV (default ~/.cache/fsdp-runtime/torch-venv);
#                     FSDP_TORCH_REQUIREMENT (default "torch>=2.4,<3") is what
#                     pip installs there when it lacks torch.
#
# Dependencies, all Debian packages: libtorch, Open MPI, Boost.Program_options,
# GoogleTest, nlohmann-json, xxHash, gperftools' tcmalloc (the programs'
# malloc: Note [Host allocator]), CMake, Ninja, iproute2 (the two-host test's
# network namespaces), and OpenBLAS (OpenMP build)
# as the BLAS that libtorch's matrix products call. The interop test needs the
# reference `safetensors` Python package, and the data tests NumPy and
# `tokenizers` (scripts/prepare_data.py), which Debian does not ship: they are
# installed from PyPI into a virtual environment in build/python. CUDA is optional: when nvcc is on
# PATH or in /usr/local/cuda, the CUDA kernels and the NCCL backend are built too.
set -euo pipefail
cd "$(dirname "$0")/.."

torch_choice=${FSDP_TORCH:-debian}
case "$torch_choice" in
  debian) build_dir=build ;;
  pip) build_dir=build-pip ;;
  *)
    echo "setup: FSDP_TORCH must be 'debian' (Debian's libtorch, the default) or 'pip'" \
         "(PyPI torch's libtorch); found '$torch_choice'" >&2
    exit 2 ;;
esac

packages=(cmake ninja-build g++ libtorch-dev libopenmpi-dev openmpi-bin
          libboost-program-options-dev libgtest-dev nlohmann-json3-dev libxxhash-dev
          libgoogle-perftools-dev
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

if [ "$torch_choice" = pip ]; then
  # PyPI torch, with the test's Python packages in the same environment (one
  # FSDP_PYTHON for the tests that need them).
  torch_venv=${FSDP_TORCH_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/fsdp-runtime/torch-venv}
  python=$torch_venv/bin/python
  if ! "$python" -c "import torch, safetensors, numpy, tokenizers" 2>/dev/null; then
    requirement=${FSDP_TORCH_REQUIREMENT:-torch>=2.4,<3}
    echo "setup: installing $requirement (with its nvidia-* packages: several GB)," \
         "safetensors, numpy and tokenizers into $torch_venv"
    mkdir -p "$(dirname "$torch_venv")"
    python3 -m venv "$torch_venv"
    "$python" -m pip install --quiet --disable-pip-version-check "$requirement" \
      "safetensors>=0.4" numpy tokenizers
  fi
  torch_prefix=$("$python" -c "import torch.utils; print(torch.utils.cmake_prefix_path)")
  echo "setup: building against PyPI torch $("$python" -c "import torch; print(torch.__version__)")" \
       "($torch_prefix) in $build_dir/"
  if [ ! -f "$build_dir/CMakeCache.txt" ]; then
    cmake -S . -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=Release \
      -DCMAKE_PREFIX_PATH="$torch_prefix" -DFSDP_PYTHON="$python"
  fi
  cmake --build "$build_dir" -j "$(nproc)"
  # The libtorch the programs load must be the one they were compiled against
  # (Debian's, in the system's library directory, would otherwise win).
  loaded=$(ldd "$build_dir/bin/fsdp-train" | awk '$1 == "libtorch_cpu.so" {print $3}')
  if [[ "$(readlink -f "$loaded")" != "$(readlink -f "$torch_prefix/../../lib")"/* ]]; then
    echo "setup: $build_dir/bin/fsdp-train loads libtorch_cpu.so from '${loaded:-nowhere}'," \
         "not from PyPI torch's $torch_prefix/../../lib" >&2
    exit 1
  fi
  # PyPI torch calls its own statically linked MKL, not the system's BLAS.
  exit 0
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
