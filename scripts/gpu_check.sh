#!/usr/bin/env bash
# The GPU measurements of docs/PERFORMANCE.md in one run (about 8-10 minutes on one GPU):
#   1. the environment (GPU, driver, torch, CUDA);
#   2. the CUDA tests (tests/engine/test_cuda.py: device agrees with CPU, AMP keeps attribution float32,
#      training steps under bf16 and fp16) and the fast-kernel equality tests;
#   3. one training step at the paper's shape (8x1x128^2, 15 classes) in float32, under bf16 autocast and with the
#      fusion network's stages compiled (torch.compile; its compile time is printed): seconds per step, phases,
#      peak memory (scripts/bench_model.py);
#   4. the class-wise IG benchmark with ig_chunk = N (the default) and 0, and the scoring copy against the
#      segmenter's own layers (scripts/bench_attribution.py);
#   5. fusing one 800x600 pair (FMB's size), float32 and bf16: seconds per pair, peak memory.
# Everything is written to OUT/ (default results/gpu_check), the summary to OUT/summary.txt.
#
#   bash scripts/gpu_check.sh                      # on a CUDA machine
#   bash scripts/gpu_check.sh --device cpu --quick # checks that the script runs (small shapes, CPU)
set -uo pipefail
cd "$(dirname "$0")/.."

DEVICE=cuda
OUT=results/gpu_check
QUICK=0
while [ $# -gt 0 ]; do
    case "$1" in
        --device) DEVICE="$2"; shift 2 ;;
        --out) OUT="$2"; shift 2 ;;
        --quick) QUICK=1; shift ;;
        -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
        *) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done
PY=${PYTHON:-.venv/bin/python}
if ! [ -x "$PY" ]; then PY=python3; fi
export HF_HUB_OFFLINE=1
mkdir -p "$OUT"
SUMMARY="$OUT/summary.txt"
: > "$SUMMARY"
say() { echo "$@" | tee -a "$SUMMARY"; }
step() { say; say "== $1 ($(date +%H:%M:%S))"; }
failed=0
run() {  # run NAME CMD...: output to OUT/NAME.log, the last lines to the summary
    local name="$1"; shift
    "$@" > "$OUT/$name.log" 2>&1
    local code=$?
    tail -n "${TAIL:-4}" "$OUT/$name.log" | tee -a "$SUMMARY"
    if [ $code -ne 0 ]; then say "!! $name exited $code (see $OUT/$name.log)"; failed=1; fi
}

if [ "$QUICK" = 1 ]; then
    TRAIN=(--batch 2 --patch 64); FUSE=(--size 120x160); ATT=(--quick); REPEATS=1
else
    TRAIN=(--batch 8 --patch 128); FUSE=(--size 600x800); ATT=(); REPEATS=3
fi

step "environment"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader \
    | tee -a "$SUMMARY"
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available',
torch.cuda.is_available(), 'bf16', torch.cuda.is_available() and torch.cuda.is_bf16_supported())" | tee -a "$SUMMARY"

step "CUDA tests and fast-kernel equality"
TAIL=2 run tests "$PY" -m pytest -q -p no:cacheprovider tests/engine/test_cuda.py tests/models/test_fast_kernels.py

step "training step, float32, bf16 and compiled ($DEVICE)"
TAIL=10 run train_step "$PY" -m scripts.bench_model --device "$DEVICE" --what train "${TRAIN[@]}" --amp bf16 \
    --compile --no-baseline --repeats "$REPEATS"
grep -E "^\[|peak memory|total |compile time" "$OUT/train_step.log" >> "$SUMMARY"

step "class-wise IG: ig_chunk = N, then 0 (one batch)"
TAIL=2 run ig_chunk_n "$PY" -m scripts.bench_attribution --device "$DEVICE" "${ATT[@]}"
TAIL=2 run ig_chunk_0 "$PY" -m scripts.bench_attribution --device "$DEVICE" "${ATT[@]}" --chunk 0

step "fusing one pair, float32 and bf16"
TAIL=6 run fuse "$PY" -m scripts.bench_model --device "$DEVICE" --what fuse "${FUSE[@]}" --amp bf16 --no-baseline \
    --repeats "$REPEATS"
grep -E "^\[|peak memory" "$OUT/fuse.log" >> "$SUMMARY"

say
say "done: $OUT/summary.txt (logs beside it)$([ $failed = 1 ] && echo '; SOME STEPS FAILED')"
exit $failed
