#!/usr/bin/env bash
# One prepared, offline check of sergraph on a machine with a CUDA GPU, run from the repository
# root in one call of well under 10 minutes:
#
#   bash benchmarks/device_wheels.sh            # once, on a machine with a package index:
#                                               # the wheels a GPU image lacks, into .whl/
#   OUT=DIR bash benchmarks/gpu_check.sh        # on the GPU machine (no network needed)
#   OUT=DIR bash benchmarks/gpu_check.sh --cpu-smoke   # the same sections, smaller, on a CPU
#                                               # (chosen by itself where no GPU is visible)
#
# Offline: the wheels in .whl/ (if any) are installed with --no-index --no-deps into the work
# folder, and sergraph is imported from the tree (PYTHONPATH; its configs are found there). If an
# import fails the check stops at once, saying which. Every section runs under its own time
# limit, the most decisive first:
#   1 versions and the GPU;
#   2 every model and preset, forward + backward under fp16 and bf16 autocast;
#   3 one synthetic fold under 32-true, 16-mixed, bf16-mixed, each exported (the export
#     re-predicts and verifies); the fold on the CPU compared with the GPU's within 1e-3; a
#     deterministic rerun compared byte for byte;
#   4 DDP over NCCL on one GPU (two where present; gloo on two CPU processes in smoke mode);
#   5 training-step graphs/s, AMP off/fp16/bf16, fast path on/off;
#   6 the tests marked gpu.
# Writes under $OUT (default: WORK/out): results.json (machine, every check with PASS/FAIL/SKIP
# and seconds), gpu_check.log (every section's output) and sections.tar.gz (one log per check).
# Prints only a short line per check. Exit status 1 if any check failed. Python: $PYTHON
# (default python3).
set -u

MODE=""
WORK=""
while [ $# -gt 0 ]; do
    case "$1" in
        --cpu-smoke) MODE=cpu ;;
        --work) WORK="$2"; shift ;;
        -h|--help) sed -n '2,28p' "$0"; exit 0 ;;
        *) echo "gpu_check.sh: unknown argument $1 (use --cpu-smoke, --work DIR)" >&2; exit 2 ;;
    esac
    shift
done

PY="${PYTHON:-python3}"
cd "$(dirname "$0")/.." || exit 2
WORK="${WORK:-$(mktemp -d "${TMPDIR:-/tmp}/sergraph-gpu-check.XXXXXX")}"
OUT="${OUT:-$WORK/out}"
LOGS="$WORK/logs"
mkdir -p "$WORK" "$OUT" "$LOGS"
export SERGRAPH_CACHE="$WORK/cache" WANDB_MODE=offline PYTHONUNBUFFERED=1
FAILED=()
START=$SECONDS
TABLE="$WORK/results.tsv"
: >"$TABLE"

# The carried wheels, offline, into the work folder; then sergraph from the tree.
if compgen -G ".whl/*.whl" >/dev/null; then
    if ! "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$WORK/site" .whl/*.whl >"$LOGS/wheels.log" 2>&1; then
        echo "FAIL installing the wheels in .whl/ offline:"; tail -n 5 "$LOGS/wheels.log"; exit 2
    fi
    export PYTHONPATH="$PWD:$WORK/site${PYTHONPATH:+:$PYTHONPATH}"
else
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
if ! "$PY" -c "import omegaconf, opensmile, sklearn, torch_geometric, lightning, torchmetrics
import sergraph.cli
from sergraph.config import compose
compose([])" >"$LOGS/imports.log" 2>&1; then
    echo "FAIL: sergraph does not import here ($PY); bring the missing packages as wheels in"
    echo "  .whl/ (bash benchmarks/device_wheels.sh on a machine with a package index):"
    tail -n 3 "$LOGS/imports.log"
    exit 2
fi
if [ -z "$MODE" ]; then
    if "$PY" -c "import sys, torch; sys.exit(not torch.cuda.is_available())"; then MODE=gpu; else MODE=cpu; fi
fi
if [ "$MODE" = gpu ]; then LIMIT=150; else LIMIT=600; fi  # seconds per check

section() { printf '=== %s (%d s so far)\n' "$1" "$((SECONDS - START))" | tee -a "$LOGS/sections.log"; }
# check NAME COMMAND...: run it under the time limit, its output into its own log; one line.
check() {
    local name="$1" begin=$SECONDS status log
    shift
    log="$LOGS/$(printf '%s' "$name" | tr -c 'A-Za-z0-9._-' '_').log"
    # shell functions too (exported below): each check runs in a child bash under its limit
    timeout "$LIMIT" bash -c '"$@"' check "$@" >"$log" 2>&1
    status=$?
    if [ $status -eq 0 ]; then
        printf 'PASS %s (%d s)\n' "$name" "$((SECONDS - begin))"
        printf '%s\tPASS\t%d\n' "$name" "$((SECONDS - begin))" >>"$TABLE"
    else
        [ $status -eq 124 ] && echo "(stopped after its limit of $LIMIT s)" >>"$log"
        printf 'FAIL %s (exit %d, %d s): %s\n' "$name" "$status" "$((SECONDS - begin))" \
            "$(grep -v '^\s*$' "$log" | tail -n 1 | cut -c1-160)"
        printf '%s\tFAIL\t%d\n' "$name" "$((SECONDS - begin))" >>"$TABLE"
        FAILED+=("$name")
    fi
    return $status
}
skip() { echo "SKIP $1: $2"; printf '%s\tSKIP\t0\n' "$1" >>"$TABLE"; }
sergraph() { "$PY" -m sergraph.cli "$@"; }
finish() {
    "$PY" benchmarks/gpu_check.py results "$TABLE" "$OUT/results.json" --mode "$MODE"
    for log in "$LOGS"/*.log; do printf '\n##### %s\n' "$(basename "$log")"; cat "$log"; done \
        >"$OUT/gpu_check.log"
    tar -czf "$OUT/sections.tar.gz" -C "$WORK" logs
}
trap finish EXIT

# The small synthetic study of the DDP tests: 4 speakers x 3 classes x 3 utterances, one fold
# (overrides without spaces: they travel to the checks' child shells as one string).
SMALL="data.options.n_speakers=4 data.options.n_per_class=3 data.classes=[neutral,happy,sad] \
folds.only=[0] trainer.max_epochs=2 optim.lr=3e-3 optim.batch_size=4 trainer.progress_bar=false \
logger.kind=none"
CELL=synthetic/lstm_gin/seed-0/fold-00
if [ "$MODE" = gpu ]; then
    ACCEL="trainer.accelerator=gpu trainer.devices=1"
else
    ACCEL="trainer.accelerator=cpu trainer.devices=1"
fi
# fold NAME OVERRIDES...: train the small study into $WORK/NAME.
fold() {
    local name="$1"
    shift
    # shellcheck disable=SC2086 # SMALL and ACCEL are lists of overrides
    sergraph train $SMALL $ACCEL "run.out_dir=$WORK/$name" "$@"
}
cpu_has_bf16_lstm() {
    "$PY" -c "import sys
from sergraph.training.capabilities import cpu_autocast_lstm_error as probe
sys.exit(probe('bfloat16') is not None)"
}
# rerun_same: the 32-true fold again; its predictions.csv must be byte-identical.
rerun_same() {
    fold det-rerun && "$PY" benchmarks/gpu_check.py same \
        "$WORK/precision-32-true/$CELL/predictions.csv" "$WORK/det-rerun/$CELL/predictions.csv"
}
export PY WORK SMALL ACCEL CELL
export -f sergraph fold cpu_has_bf16_lstm rerun_same

section "1 machine (mode: $MODE, work folder: $WORK, results: $OUT)"
check "versions" "$PY" - <<'EOF'
import torch, torch_geometric, lightning, torchmetrics, opensmile
print(f"torch {torch.__version__}, CUDA build {torch.version.cuda}, cuDNN "
      f"{torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None}, "
      f"CUDA devices {torch.cuda.device_count()}; torch_geometric {torch_geometric.__version__}, "
      f"lightning {lightning.__version__}, torchmetrics {torchmetrics.__version__}, "
      f"opensmile {opensmile.__version__}")
for i in range(torch.cuda.device_count()):
    print(f"  cuda:{i} {torch.cuda.get_device_name(i)}, capability {torch.cuda.get_device_capability(i)}")
for name, backend in (("matmul", torch.backends.cuda.matmul), ("cudnn", torch.backends.cudnn),
                      ("cudnn.rnn", getattr(torch.backends.cudnn, "rnn", None))):
    precision = getattr(backend, "fp32_precision", None)
    if precision is not None:
        print(f"  {name}.fp32_precision = {precision}")
try:
    import torch_scatter  # noqa: F401
    print("WARNING: torch_scatter is installed: its atomic CUDA kernels are not deterministic")
except ImportError:
    print("torch_scatter not installed (good: PyG uses torch's own scatter)")
EOF
head -n 2 "$LOGS/versions.log"

section "2 every model and preset, forward + backward under fp16 and bf16 autocast"
if [ "$MODE" = gpu ]; then
    check "autocast fp16+bf16 cuda" "$PY" benchmarks/gpu_check.py autocast --device cuda
else
    skip "autocast fp16 cpu" "CPU autocast has no fp16 LSTM kernel (sergraph train refuses it)"
    check "autocast bf16 cpu" "$PY" benchmarks/gpu_check.py autocast --device cpu --dtypes bfloat16
fi

section "3 one fold per precision, exported and verified; CPU vs GPU; deterministic rerun"
for precision in 32-true 16-mixed bf16-mixed; do
    if [ "$MODE" = cpu ] && [ "$precision" = 16-mixed ]; then
        skip "fold 16-mixed" "fp16 AMP trains on a GPU only"
        continue
    fi
    if [ "$MODE" = cpu ] && [ "$precision" = bf16-mixed ] && ! cpu_has_bf16_lstm; then
        skip "fold bf16-mixed" "this CPU has no bf16 LSTM kernel (sergraph train refuses it)"
        continue
    fi
    if check "fold $precision" fold "precision-$precision" "trainer.precision=$precision"; then
        check "export $precision" sergraph export "$WORK/precision-$precision/synthetic/lstm_gin" \
            -o "$WORK/precision-$precision.sergraph"
    fi
done
REFERENCE="$WORK/precision-32-true/$CELL/predictions.csv"
if [ -f "$REFERENCE" ]; then
    check "deterministic rerun byte-identical" rerun_same
    if [ "$MODE" = gpu ]; then
        # shellcheck disable=SC2086
        if check "fold 32-true on the cpu" sergraph train $SMALL trainer.accelerator=cpu \
            "run.out_dir=$WORK/cpu-32"; then
            check "gpu vs cpu fold within 1e-3" "$PY" benchmarks/gpu_check.py within \
                "$REFERENCE" "$WORK/cpu-32/$CELL/predictions.csv" --tolerance 1e-3
        fi
    fi
else
    skip "deterministic rerun" "the 32-true fold failed"
fi

section "4 DDP"
GPUS=$("$PY" -c "import torch; print(torch.cuda.device_count())")
if [ "$MODE" = gpu ]; then
    check "DDP fold, NCCL, 1 GPU" fold ddp-1gpu trainer.strategy=ddp trainer.devices=1
    if [ "$GPUS" -ge 2 ]; then
        check "DDP fold, NCCL, 2 GPUs" fold ddp-2gpu trainer.strategy=ddp trainer.devices=2
    else
        skip "DDP fold, 2 GPUs" "$GPUS GPU visible"
    fi
else
    check "DDP fold, gloo, 2 CPU processes" fold ddp-cpu trainer.devices=2 trainer.strategy=ddp
fi

section "5 training-step graphs/s (forward + backward + Adam)"
if [ "$MODE" = gpu ]; then
    LIMIT=200 check "bench_train_step cuda" "$PY" benchmarks/bench_train_step.py --device cuda \
        --batch-sizes 32,128,512 --precision 32,bf16-mixed --fast-path on,off --steps 20 \
        --skip-ratios --skip-packing
else
    check "bench_train_step cpu (2 models, batch 32, 1 step)" "$PY" benchmarks/bench_train_step.py \
        --device cpu --models gin,lstm_gin --batch-sizes 32 --precision 32,bf16-mixed \
        --fast-path on,off --steps 1 --skip-ratios --skip-packing
fi

section "6 tests marked gpu"
if [ "$MODE" = gpu ]; then
    check "pytest -m gpu" "$PY" -m pytest -m gpu -q -p no:cacheprovider -rs \
        --continue-on-collection-errors tests
else
    skip "pytest -m gpu" "no GPU"
fi

section "done in $((SECONDS - START)) s (mode: $MODE)"
if [ ${#FAILED[@]} -eq 0 ]; then
    echo "all checks passed; results in $OUT"
    exit 0
fi
echo "FAILED (${#FAILED[@]}): ${FAILED[*]}; results in $OUT"
exit 1
