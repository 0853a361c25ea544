#!/usr/bin/env bash
# One device session: CUDA tests, the meta-step benchmark, then reduced-budget MNIST sweeps for
# Tables 2/4 until the deadline. Everything lands under $OUT. Settings overridable for a CPU dry run.
set -u
T0=$(date +%s)
DEADLINE=${DEADLINE:-520}          # seconds after start when the sweeps are stopped
PY=${PY:-python3}
STEPS=${STEPS:-1000}
PAR=${PAR:-6}                       # jobs at once per sweep (two sweeps side by side)
BENCH_INNER=${BENCH_INNER:-2000}
OUT=${OUT:?}
left() { echo $((T0 + DEADLINE - $(date +%s))); }
stamp() { echo "[$(( $(date +%s) - T0 )) s] $*" | tee -a "$OUT/timeline.txt"; }

if [ -z "${SKIP_INSTALL:-}" ]; then
  S=$(mktemp -d) && $PY -m pip install -q --no-index --no-deps --no-compile --target "$S" .dev/whl/*.whl
  export PYTHONPATH=$S
  mkdir -p data/MNIST/raw && for f in .dev/mnist/*.gz; do gunzip -c "$f" > data/MNIST/raw/$(basename "$f" .gz); done
fi
export PYTHONUNBUFFERED=1
{ nvidia-smi -L; lscpu | grep -i "model name"; nproc; $PY -c "import torch; print('torch', torch.__version__, torch.cuda.is_available() and torch.cuda.get_device_name())"; } > "$OUT/machine.txt" 2>&1
stamp "setup done"

timeout ${TEST_TIMEOUT:-100} $PY -m pytest -q -p no:cacheprovider tests/test_meta_batched.py > "$OUT/test_meta_batched.log" 2>&1
stamp "tests rc=$?"

timeout 130 $PY benchmarks/meta_step.py --data_dir data --device "${BENCH_DEVICE:-cuda}" \
  --inner_steps "$BENCH_INNER" --outer_steps 1 --out "$OUT/meta_step_benchmark.txt" > "$OUT/meta_step.log" 2>&1
stamp "benchmark rc=$?"

# Sweeps: algorithms added one at a time, so that what finishes before the deadline is whole
# algorithms on every dataset (each call launches only what is missing).
sweep() {  # sweep SCRIPT NAME EXTRA
  local algs=""
  for a in ERM ERM_ITL CORAL RSC Mixup SagNet CDANN; do
    algs="$algs $a"
    [ "$(left)" -le 5 ] && break
    stamp "$2 +$a"
    PY=$PY DATA_DIR=data OUT_ROOT=out/gpu N_HPARAMS=1 N_TRIALS=2 STEPS=$STEPS YES=1 \
      MAX_PARALLEL=$PAR DATASETS="RotatedMNIST ColoredMNIST" ALGORITHMS="$algs" EXTRA="$3" \
      OMP_NUM_THREADS=1 bash "sweeps/$1" launch >> "$OUT/$2.log" 2>&1
  done
}
sweep table2_domainbed.sh table2 --single_test_envs &
sweep table4_single_source.sh table4 "" &
while [ "$(left)" -gt 0 ] && [ -n "$(jobs -r)" ]; do sleep 2; done
stamp "deadline or sweeps finished"
pkill -TERM -f "out/gpu/" ; sleep 3; pkill -KILL -f "out/gpu/"
kill %1 %2 2>/dev/null
for d in out/gpu/*/*/; do
  t=$(basename "$(dirname "$d")"); h=$(basename "$d")
  mkdir -p "$OUT/sweeps/$t/$h"
  cp "$d"/results.jsonl "$d"/done "$OUT/sweeps/$t/$h/" 2>/dev/null
  [ -f "$d/done" ] || tail -c 3000 "$d/err.txt" > "$OUT/sweeps/$t/$h/err_tail.txt" 2>/dev/null
done
echo "done jobs: $(find "$OUT/sweeps" -name done | wc -l) of $(ls -d "$OUT"/sweeps/*/*/ | wc -l)" | tee -a "$OUT/timeline.txt"
stamp "end"
