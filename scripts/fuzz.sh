#!/usr/bin/env bash
# Fuzzes the readers of untrusted checkpoint files with libFuzzer (clang, with
# AddressSanitizer and UndefinedBehaviorSanitizer), one target after another.
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]
# Targets: safetensors_header checkpoint_index hf_index (default: all), 600 s
# each by default. Inputs that grow coverage are kept in build-fuzz/corpus/;
# a failing input is written to build-fuzz/findings/ and the script fails.
# Copy a finding into tests/fuzz/corpus/TARGET/ once fixed: scripts/test.sh
# replays that folder on every run (fuzz_corpus_TARGET).
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-600}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(safetensors_header checkpoint_index hf_index)

scripts/setup.sh >/dev/null  # the project's own dependencies
if ! command -v clang++ >/dev/null || ! ls /usr/lib/llvm-*/lib/clang/*/lib/linux/libclang_rt.fuzzer-x86_64.a >/dev/null 2>&1; then
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo=sudo
  $sudo apt-get install -y --no-install-recommends clang libclang-rt-dev
fi
if [ ! -f build-fuzz/CMakeCache.txt ]; then
  CC=clang CXX=clang++ cmake -S . -B build-fuzz -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DFSDP_FUZZ=ON -DFSDP_SANITIZE=address,undefined -DFSDP_ENABLE_CUDA=OFF \
    -DFSDP_PYTHON="$PWD/build/python/bin/python" >/dev/null
fi
cmake --build build-fuzz --target $(printf '%s_fuzzer ' "${targets[@]}")

status=0
for target in "${targets[@]}"; do
  corpus=build-fuzz/corpus/$target
  findings=build-fuzz/findings/$target
  mkdir -p "$corpus" "$findings"
  echo "fuzz: $target for $seconds s"
  # -rss_limit_mb: a parser may use memory in proportion to its input, no more.
  if ! build-fuzz/fuzz/${target}_fuzzer "$corpus" "tests/fuzz/corpus/$target" \
      -max_total_time="$seconds" -max_len=65536 -rss_limit_mb=2048 -timeout=10 \
      -artifact_prefix="$findings/" -print_final_stats=1 2>&1 | tail -n 25; then
    echo "fuzz: $target FOUND A FAILING INPUT: $(ls "$findings")"
    status=1
  fi
done
exit $status
