#!/usr/bin/env bash
# The trainer on one accelerator, in at most 8 minutes on an H200: throughput, MFU and peak
# memory of a T5-large-shaped (bf16, 2048/512) and a ~1.5B PaLM-style decoder (bf16, 2048),
# bf16 against fp32 loss over 20 steps, and sharded decoding on the device.
#
#   bench/gpu.sh                  # on the accelerator; JSON in $OUT (else ./bench-out)
#   bench/gpu.sh --smoke          # tiny shapes on any CPU: checks the script itself
#
# Extra arguments go to bench/gpu_bench.py (e.g. --accelerator h100-80g, --steps 20).
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-bench-out}"
mkdir -p "$out"
python="${PYTHON:-python}"
[[ -x .venv/bin/python && -z "${PYTHON:-}" ]] && python=.venv/bin/python
# The trainer imports nothing from the orchestrator's services: check it before spending the device.
"$python" - <<'PY'
import sys
sys.path.insert(0, ".")
import bench.gpu_bench, orchestrator.catalog, trainers.job, trainers.train  # noqa: F401
import trainers.data.packing, trainers.eval.decoding, trainers.eval.placement  # noqa: F401
leaked = sorted(m for m in ("ray", "mlflow", "hydra") if m in sys.modules)
sys.exit(f"bench/gpu.sh: the benchmark imported {', '.join(leaked)}" if leaked else 0)
PY
"$python" -c 'import jax; print("jax", jax.__version__, jax.devices())' | tee "$out/devices.txt"
# One process per part: a device's peak memory is the process's peak.
deadline=$((SECONDS + ${GPU_BENCH_TIMEOUT:-470}))
status=0
for part in t5-large palm-1b loss; do
  left=$((deadline - SECONDS))
  if (( left < 10 )); then echo "bench/gpu.sh: no time left for $part" >&2; status=1; break; fi
  timeout "$left" "$python" bench/gpu_bench.py --only "$part" --out "$out" "$@" || status=1
done
ls "$out"
exit $status
