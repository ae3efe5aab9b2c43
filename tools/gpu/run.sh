#!/usr/bin/env bash
# Runs DiffuSharp's device tests and `diffu bench` from an unpacked GPU bundle (tools/gpu/bundle.sh builds
# it), on the .NET runtime inside the bundle: no SDK, no network.
#   tar xJf diffusharp-gpu.tar.xz && diffusharp-gpu/run.sh [options]
# Exit code: 0 every step run passed; 1 tests failed, none ran, or (--device cuda) some were skipped for
# want of a GPU; 2 bad arguments or a broken bundle;
# 3 the tests passed (or were not run) but the bench failed.
set -euo pipefail

usage() {
  cat <<'EOF'
usage: run.sh [--device NAME] [--tests-only | --bench-only] [--results DIR] [--where REGEX]
              [--bench-args "ARGS"] [--timeout S]
  --device NAME      cuda (default), ilgpu-cpu, cpu or opencl: the tests whose names mention it,
                     and the bench on it; DIFFU_DEVICE is set to it
  --tests-only       only the tests            --bench-only   only the bench
  --results DIR      where the outputs go (default: results/DEVICE-YYYYmmdd-HHMMSS beside this script)
  --where REGEX      the tests to run, a .NET regex on the full test name (replaces the device's default)
  --bench-args ARGS  passed on to diffu bench, e.g. "--quick" or "--suite matmul --repeat 5"
  --timeout S        stop each step (tests, bench) after S seconds (default: no limit)
Writes into the results folder: environment.txt, tests.txt, bench.txt, bench.json, bench.md, plots/, summary.txt.
EOF
}

die() { echo "run.sh: $*" >&2; exit 2; }

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
device=cuda tests=1 bench=1 results="" where="" bench_args="" timeout_s=0
while [ $# -gt 0 ]; do
  case "$1" in
    --device) [ $# -ge 2 ] || die "--device needs a value"; device=$2; shift 2 ;;
    --tests-only) bench=0; shift ;;
    --bench-only) tests=0; shift ;;
    --results) [ $# -ge 2 ] || die "--results needs a folder"; results=$2; shift 2 ;;
    --where) [ $# -ge 2 ] || die "--where needs a regex"; where=$2; shift 2 ;;
    --bench-args) [ $# -ge 2 ] || die "--bench-args needs a value"; bench_args=$2; shift 2 ;;
    --timeout) [[ $# -ge 2 && $2 =~ ^[0-9]+$ ]] || die "--timeout needs whole seconds"; timeout_s=$2; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument '$1'" ;;
  esac
done
[ "$tests" = 1 ] || [ "$bench" = 1 ] || die "--tests-only and --bench-only together leave nothing to run"

# Tests carry their device in their names: fixture or case arguments ("cuda", Cuda, "ilgpu-cpu",
# CpuSimulator), and the cuBLAS reference's tests name the library instead.
if [ -z "$where" ]; then
  case "$device" in
    cuda) where='(?i)cuda|cublas' ;;
    ilgpu-cpu) where='"ilgpu-cpu"|\(CpuSimulator\)' ;;
    cpu) where='"cpu"' ;;
    *) where="(?i)$device" ;;
  esac
fi

[ "$(uname -s)/$(uname -m)" = Linux/x86_64 ] || die "this bundle carries a linux-x64 .NET runtime; this machine is $(uname -s)/$(uname -m)"
dotnet="$here/dotnet/dotnet"
app="$here/repo/app"
[ -x "$dotnet" ] || die "no bundled runtime at $dotnet (unpack the whole archive: tar xJf diffusharp-gpu.tar.xz)"
[ -f "$app/DiffuSharp.Tests.dll" ] && [ -f "$app/diffu.dll" ] || die "no DiffuSharp.Tests.dll / diffu.dll in $app"

results=${results:-"$here/results/$device-$(date +%Y%m%d-%H%M%S)"}
mkdir -p "$results" || die "cannot create the results folder $results"
results=$(cd "$results" && pwd)

# Only the bundled runtime: DOTNET_ROOT for anything that looks for one, no SDK lookups, no telemetry.
export DOTNET_ROOT="$here/dotnet" DOTNET_CLI_TELEMETRY_OPTOUT=1 DOTNET_NOLOGO=1 DIFFU_DEVICE="$device"
python=${DIFFU_PYTHON:-python3}

# cuBLAS (the bench's in-process reference) often exists only inside PyTorch's wheel (nvidia/cublas/lib);
# point DIFFU_CUBLAS at it when the dynamic loader cannot find one by itself.
if [ -z "${DIFFU_CUBLAS:-}" ] && ! { command -v ldconfig >/dev/null && ldconfig -p 2>/dev/null | grep -q 'libcublas\.so'; }; then
  cublas=$("$python" - 2>/dev/null <<'EOF' || true
import glob, os, torch
site = os.path.dirname(os.path.dirname(torch.__file__))
found = glob.glob(os.path.join(site, "nvidia", "cu*", "lib", "libcublas.so.*")) + glob.glob(os.path.join(site, "torch", "lib", "libcublas.so.*"))
print(sorted(found)[-1] if found else "")
EOF
)
  if [ -n "$cublas" ]; then export DIFFU_CUBLAS="$cublas"; fi
fi

# Runs a step with its output in a log; prints it minus per-test "passed" lines; returns its exit code.
run_step() {
  local log=$1; shift
  local limit=()
  if [ "$timeout_s" -gt 0 ]; then limit=(timeout -k 30 "$timeout_s"); fi
  set +e
  "${limit[@]}" "$@" 2>&1 | tee "$log" | grep --line-buffered -v '^passed '
  local rc=${PIPESTATUS[0]}
  set -e
  return "$rc"
}

{
  echo "== bundle"; cat "$here/BUILD" 2>/dev/null || echo "(no BUILD file)"
  echo "== machine"; uname -a; nproc; free -g 2>/dev/null | head -2 || true
  echo "== .NET"; "$dotnet" --list-runtimes
  echo "== GPU"
  if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv || true
    nvidia-smi || true
  else
    echo "nvidia-smi not found"
  fi
  echo "== Python ($python)"
  "$python" -c 'import sys, torch; print(sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())' 2>&1 || true
  echo "DIFFU_CUBLAS=${DIFFU_CUBLAS:-}"
} >"$results/environment.txt" 2>&1
echo "== DiffuSharp GPU bundle: device $device, results in $results"
grep -A1 '^== bundle' "$results/environment.txt" | tail -1
if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv,noheader || echo "nvidia-smi failed"
elif [ "$device" = cuda ]; then
  echo "nvidia-smi not found: without a GPU the cuda tests are reported as skipped, not passed"
fi

tests_line="not run" tests_rc=0 no_gpu=0
if [ "$tests" = 1 ]; then
  echo "== tests matching /$where/ (DIFFU_DEVICE=$device)"
  run_step "$results/tests.txt" "$dotnet" "$app/DiffuSharp.Tests.dll" --where "$where" --verbose || tests_rc=$?
  tests_line=$(grep -E '^[0-9]+ passed, [0-9]+ failed, [0-9]+ skipped$' "$results/tests.txt" | tail -1 || true)
  if [ -z "$tests_line" ]; then
    tests_line="no summary: the test run stopped early (exit $tests_rc)"
    [ "$tests_rc" -ne 0 ] || tests_rc=1
  fi
  [ "$tests_rc" -ne 124 ] || tests_line="$tests_line; stopped by --timeout $timeout_s"
  # A CUDA run that skipped its tests for want of a GPU verified nothing: that is not a pass.
  no_gpu=$(grep -c '^skipped .*no CUDA GPU' "$results/tests.txt" || true)
  if [ "$device" = cuda ] && [ "${no_gpu:-0}" -gt 0 ] && [ "$tests_rc" -eq 0 ]; then tests_rc=1; fi
fi

bench_line="not run" bench_rc=0
if [ "$bench" = 1 ]; then
  read -r -a extra <<<"$bench_args"
  echo "== diffu bench --device $device ${bench_args}"
  run_step "$results/bench.txt" "$here/diffu" bench --device "$device" --json "$results/bench.json" --markdown "$results/bench.md" \
    --plots "$results/plots" --eval-data "$here/shared/data/eval" --tokenizer "$here/shared/data/tokenizers/gpt2" "${extra[@]}" || bench_rc=$?
  if [ "$bench_rc" -eq 0 ]; then
    bench_line="ok: bench.json, $(find "$results/plots" -name '*.png' 2>/dev/null | wc -l) plots"
  else
    bench_line="FAILED with exit code $bench_rc (see bench.txt)"
  fi
fi

{
  echo "device: $device"
  echo "tests (/$where/): $tests_line"
  if [ "$device" = cuda ] && [ "${no_gpu:-0}" -gt 0 ]; then
    echo "  $no_gpu tests skipped with 'no CUDA GPU': .NET found no CUDA device here (driver, libcuda.so.1?); counted as a failure"
  fi
  echo "bench: $bench_line"
  echo "results: $results"
} >"$results/summary.txt"
echo "== summary"
cat "$results/summary.txt"

if [ "$tests_rc" -ne 0 ]; then exit 1; fi
if [ "$bench_rc" -ne 0 ]; then exit 3; fi
exit 0
