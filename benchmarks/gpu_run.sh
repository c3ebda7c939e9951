#!/usr/bin/env bash
# On the lent GPU machine: install the carried bundle (python -m benchmarks.gpu_bundle, here) and run the GPU
# check, its JSON and log under $OUT (the folder the device tool brings back). Extra arguments go to gpu_check:
#   run(command="bash benchmarks/gpu_run.sh", carry=[".gpu"], timeout_s=540)
set -uo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
bundle=${GPU_BUNDLE:-$repo/.gpu}
out=${OUT:-$repo/runs}
python=${PYTHON:-python3}
site=$(mktemp -d)
[ -d "$bundle/wheels" ] || { echo "no bundle at $bundle: build it with python -m benchmarks.gpu_bundle" >&2; exit 2; }
"$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" "$bundle"/wheels/*.whl \
    || exit 2
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv > "$out/gpu.txt" 2>&1
# Out of the repo's root, so `fastvit` is the installed wheel (the source tree maps kernels/ only when installed).
cd "$site" || exit 2
PYTHONPATH="$site:$repo" LD_LIBRARY_PATH="$bundle/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" PYTHONUNBUFFERED=1 \
    "$python" -m benchmarks.gpu_check --json "$out/gpu_check.json" "$@" 2>&1 | tee "$out/gpu_check.log"
