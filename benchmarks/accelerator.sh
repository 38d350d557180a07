#!/usr/bin/env bash
# The performance tables on whatever JAX sees: GPUs, TPUs, or the CPU.
#
#   bash benchmarks/accelerator.sh                 # everything (about 10-20 minutes on one GPU)
#   QUICK=1 bash benchmarks/accelerator.sh         # small sizes: checks the script in a minute
#   PYTHON=.venv/bin/python OUT=somewhere bash benchmarks/accelerator.sh
#
# Install JAX for the accelerator first (e.g. `pip install -U "jax[cuda12]"` in the project's
# environment). Every table is printed and kept under $OUT (default
# benchmarks/results/accelerator-TIMESTAMP, git-ignored): devices.txt (what JAX saw),
# devices.md / devices.json (ensemble and one cloud over 1, 2, 4, ... devices; the direct
# field and whole solve up to n = 2^18), phase-diagram.md (the paper's 1024 starts x 30
# betas, SA and USA, through `python -m sims`), fast.md (fast summation at n = 2^20, when
# benchmarks/bench_fast.py exists). A step that fails is reported and the others still run.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
OUT=${OUT:-benchmarks/results/accelerator-$(date +%Y%m%d-%H%M%S)}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export MPLBACKEND=Agg
mkdir -p "$OUT"
failed=()

step() {  # step NAME FILE COMMAND...: run, show and keep the output, remember a failure
    local name=$1 file=$2
    shift 2
    echo "== $name: $*"
    if ! "$@" 2>&1 | tee "$OUT/$file"; then
        failed+=("$name")
    fi
}

if [[ -n "${QUICK:-}" ]]; then
    sizes=1024,4096 runs=64 betas=2 phase=(--runs 16 --num-betas 4 --t1 5 --frames 6) fast=65536
else
    sizes=16384,65536,262144 runs=512 betas=8 phase=(--runs 1024 --num-betas 30) fast=1048576
fi

step devices devices.txt "$PY" -c '
import jax, platform
print("jax", jax.__version__, "python", platform.python_version())
print(len(jax.devices()), "devices:", ", ".join(f"{d.device_kind} ({d.platform})" for d in jax.devices()))
'

# ensemble (runs x betas members) and one cloud over 1, 2, 4, ... devices; direct field
# evaluation and whole solve at each size (one device, then split by query tokens)
step scaling devices.md "$PY" benchmarks/bench_devices.py --runs "$runs" --betas "$betas" \
    --cloud-n "$sizes" --solve --out "$OUT/devices.json"

# the paper's phase diagram, SA and USA, on every device JAX sees
step phase-diagram phase-diagram.md "$PY" -m sims run phase-diagram "${phase[@]}" \
    --devices all --no-animation --out "$OUT/phase-diagram"
if [[ -f "$OUT/phase-diagram/metrics.json" ]]; then
    "$PY" -c '
import json, sys
m = json.load(open(sys.argv[1]))["phase_diagram"]
print("| normalization | members | seconds (with compilation) | median steps | max steps |")
print("|---|---:|---:|---:|---:|")
for name, r in m.items():
    row = (name, r["members"], r["seconds_with_compilation"], r["steps_median"], r["steps_max"])
    print("| %s | %d | %.1f | %.0f | %d |" % row)
' "$OUT/phase-diagram/metrics.json" | tee -a "$OUT/phase-diagram.md"
fi

# fast summation at n = 2^20, once its benchmark has landed
if [[ -f benchmarks/bench_fast.py ]]; then
    step fast fast.md "$PY" benchmarks/bench_fast.py --sizes "$fast"
else
    echo "== fast: benchmarks/bench_fast.py is not here yet; skipped"
fi

echo
echo "results in $OUT"
if ((${#failed[@]})); then
    echo "failed steps: ${failed[*]}"
    exit 1
fi
