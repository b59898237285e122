#!/usr/bin/env bash
# One prepared check of sergraph on a machine with a CUDA GPU (under 10 minutes on one GPU of the
# H100 class), run from the repository root:
#
#   bash benchmarks/gpu_check.sh               # on a GPU machine
#   bash benchmarks/gpu_check.sh --cpu-smoke   # dry run on CPU: the same sections, smaller;
#                                              # the parts that need CUDA say "skipped"
#   bash benchmarks/gpu_check.sh --work DIR    # keep runs and logs in DIR (default: a new temp dir)
#
# Prints, section by section: the machine and CUDA/cuDNN/TF32 settings; the tests marked `gpu`;
# every registered model forward+backward under fp16 and bf16 autocast (padded and true-length
# batches, fast path on and off); a 2-epoch fold under 32-true, 16-mixed and bf16-mixed, each
# then exported (the export re-predicts and checks against predictions.csv); a deterministic
# rerun (trainer.deterministic=true, the default) and non-deterministic reruns compared;
# training-step graphs/s of every model at batch 32/128 with AMP off/fp16/bf16 and the fast path
# on/off; a two-GPU DDP fold when two GPUs are present.
# Each section ends with PASS or FAIL and its time; the last lines list the failures, and the
# exit status is 1 if any. Python: $PYTHON (default: python) with sergraph importable.
set -u

MODE=gpu
WORK=""
while [ $# -gt 0 ]; do
    case "$1" in
        --cpu-smoke) MODE=cpu ;;
        --work) WORK="$2"; shift ;;
        -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
        *) echo "gpu_check.sh: unknown argument $1 (use --cpu-smoke, --work DIR)" >&2; exit 2 ;;
    esac
    shift
done

PY="${PYTHON:-python}"
cd "$(dirname "$0")/.." || exit 2
WORK="${WORK:-$(mktemp -d "${TMPDIR:-/tmp}/sergraph-gpu-check.XXXXXX")}"
mkdir -p "$WORK"
export SERGRAPH_CACHE="$WORK/cache" WANDB_MODE=offline PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
FAILED=()
START=$SECONDS

section() { printf '\n=== %s (%s, %d s so far)\n' "$1" "$(date -u +%H:%M:%S)" "$((SECONDS - START))"; }
# check NAME COMMAND...: run it, print PASS/FAIL with its time, remember failures.
check() {
    local name="$1" begin=$SECONDS status
    shift
    "$@"
    status=$?
    if [ $status -eq 0 ]; then
        echo "PASS $name ($((SECONDS - begin)) s)"
    else
        echo "FAIL $name (exit $status, $((SECONDS - begin)) s)"
        FAILED+=("$name")
    fi
    return $status
}
skip() { echo "SKIPPED $1: $2"; }
sergraph() { "$PY" -m sergraph.cli "$@"; }

# The small synthetic study of the DDP tests: 4 speakers x 3 classes x 3 utterances, one fold.
SMALL=(
    data.options.n_speakers=4 data.options.n_per_class=3 "data.classes=[neutral,happy,sad]"
    "folds.only=[0]" trainer.max_epochs=2 optim.lr=3e-3 optim.batch_size=4 trainer.progress_bar=false
)
CELL=synthetic/lstm_gin/seed-0/fold-00
if [ "$MODE" = gpu ]; then
    ACCEL=(trainer.accelerator=gpu trainer.devices=1)
    DEVICE=cuda
else
    ACCEL=(trainer.accelerator=cpu trainer.devices=1)
    DEVICE=cpu
fi
# fold NAME OVERRIDES...: train the small study into $WORK/NAME, log in $WORK/NAME.log.
fold() {
    local name="$1"
    shift
    sergraph train "${SMALL[@]}" "${ACCEL[@]}" "run.out_dir=$WORK/$name" "$@" >"$WORK/$name.log" 2>&1
    local status=$?
    grep -E "WA [0-9.]+ UA" "$WORK/$name.log" | tail -n 1
    [ $status -eq 0 ] || tail -n 15 "$WORK/$name.log"
    return $status
}

section "machine (mode: $MODE, work folder: $WORK)"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=index,name,driver_version,memory.total --format=csv
"$PY" - <<'EOF'
import torch
print(f"torch {torch.__version__}, CUDA build {torch.version.cuda}, cuDNN "
      f"{torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None}, "
      f"CUDA devices {torch.cuda.device_count()}")
for i in range(torch.cuda.device_count()):
    print(f"  cuda:{i} {torch.cuda.get_device_name(i)}, capability {torch.cuda.get_device_capability(i)}")
for name, backend in (("matmul", torch.backends.cuda.matmul), ("cudnn", torch.backends.cudnn),
                      ("cudnn.conv", getattr(torch.backends.cudnn, "conv", None)),
                      ("cudnn.rnn", getattr(torch.backends.cudnn, "rnn", None))):
    precision = getattr(backend, "fp32_precision", None)
    if precision is not None:
        print(f"  {name}.fp32_precision = {precision}  (tf32 = TF32 math for fp32 on Ampere+)")
try:
    import torch_scatter  # noqa: F401
    print("WARNING: torch_scatter is installed: its atomic CUDA kernels are not deterministic")
except ImportError:
    print("torch_scatter not installed (good: PyG uses torch's own scatter)")
EOF
if [ "$MODE" = gpu ] && ! "$PY" -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
    echo "no CUDA device: run with --cpu-smoke on a machine without a GPU"
    exit 2
fi

section "tests marked gpu (pytest -m gpu)"
check "pytest -m gpu" "$PY" -m pytest -m gpu -q -p no:cacheprovider -rs tests

if [ "$MODE" = gpu ]; then
    section "every model, forward + backward under fp16 and bf16 autocast on cuda"
    check "autocast fp16/bf16, every model" "$PY" benchmarks/gpu_check.py autocast --device cuda
else
    section "every model, forward + backward under bf16 autocast on cpu"
    skip "fp16 autocast" "CUDA only (CPU training has no 16-mixed; oneDNN has no fp16 LSTM)"
    check "autocast bf16, every model" "$PY" benchmarks/gpu_check.py autocast --device cpu \
        --dtypes bfloat16
fi

section "2-epoch fold under each precision, then export (the export re-predicts and compares)"
for precision in 32-true 16-mixed bf16-mixed; do
    if [ "$MODE" = cpu ] && [ "$precision" = 16-mixed ]; then
        skip "fold 16-mixed" "fp16 AMP is CUDA only (Lightning refuses it on CPU)"
        continue
    fi
    if [ "$MODE" = cpu ] && [ "$precision" = bf16-mixed ] && ! "$PY" -c "import sys
from sergraph.training.capabilities import cpu_autocast_lstm_error as probe
sys.exit(probe('bfloat16') is not None)"; then
        skip "fold bf16-mixed" "this CPU has no bf16 LSTM kernel (sergraph train refuses it)"
        continue
    fi
    if check "fold $precision" fold "precision-$precision" "trainer.precision=$precision"; then
        check "export $precision" sergraph export "$WORK/precision-$precision/synthetic/lstm_gin" \
            -o "$WORK/precision-$precision.sergraph"
        if [ "$precision" != 32-true ] && [ -f "$WORK/precision-32-true/$CELL/predictions.csv" ]; then
            "$PY" benchmarks/gpu_check.py diff "$WORK/precision-32-true/$CELL/predictions.csv" \
                "$WORK/precision-$precision/$CELL/predictions.csv"
        fi
    fi
done

section "determinism: trainer.deterministic=true (the default) rerun must be identical; =false twice"
if [ -f "$WORK/precision-32-true/$CELL/predictions.csv" ]; then
    check "fold deterministic rerun" fold det-rerun trainer.deterministic=true
    check "deterministic reruns identical" "$PY" benchmarks/gpu_check.py same \
        "$WORK/precision-32-true/$CELL/predictions.csv" "$WORK/det-rerun/$CELL/predictions.csv"
else
    skip "deterministic rerun" "the 32-true fold above failed"
fi
check "fold non-deterministic run 1" fold nondet-1 trainer.deterministic=false
check "fold non-deterministic run 2" fold nondet-2 trainer.deterministic=false
echo "non-deterministic rerun vs run (informational):"
"$PY" benchmarks/gpu_check.py diff "$WORK/nondet-1/$CELL/predictions.csv" \
    "$WORK/nondet-2/$CELL/predictions.csv"
echo "deterministic vs non-deterministic (informational; TF32 vs IEEE fp32 on Ampere+):"
"$PY" benchmarks/gpu_check.py diff "$WORK/precision-32-true/$CELL/predictions.csv" \
    "$WORK/nondet-1/$CELL/predictions.csv"

section "training-step graphs/s (forward + backward + Adam), AMP off/on, fast path on/off"
if [ "$MODE" = gpu ]; then
    check "bench_train_step" "$PY" benchmarks/bench_train_step.py --device cuda --batch-sizes 32,128 \
        --precision 32,16-mixed,bf16-mixed --fast-path on,off --steps 3 --skip-ratios --skip-packing
else
    check "bench_train_step (smoke: 2 models, batch 32, 1 step)" "$PY" benchmarks/bench_train_step.py \
        --device cpu --models gin,lstm_gin --batch-sizes 32 --precision 32,bf16-mixed \
        --fast-path on,off --steps 1 --skip-ratios --skip-packing
fi

section "DDP fold over two processes"
GPUS=$("$PY" -c "import torch; print(torch.cuda.device_count())")
if [ "$MODE" = gpu ] && [ "$GPUS" -ge 2 ]; then
    check "DDP fold on 2 GPUs" fold ddp-2gpu trainer.devices=2 trainer.strategy=ddp
elif [ "$MODE" = gpu ]; then
    skip "DDP fold on 2 GPUs" "$GPUS GPU visible, needs 2"
else
    echo "(smoke: the same command over gloo on CPU)"
    check "DDP fold, 2 CPU processes (gloo)" fold ddp-cpu trainer.devices=2 trainer.strategy=ddp
fi

section "done in $((SECONDS - START)) s"
if [ ${#FAILED[@]} -eq 0 ]; then
    echo "all checks passed (mode: $MODE)"
    exit 0
fi
echo "FAILED (${#FAILED[@]}):"
printf '  %s\n' "${FAILED[@]}"
exit 1
