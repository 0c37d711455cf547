#!/usr/bin/env bash
# GPU check in one run: VGG16 fc2 (random weights) in float16 and float32 at --batch-size auto under
# KERAS_BACKEND=torch and jax: the extract pipeline, the model alone on pre-decoded pictures, and
# decoding alone, on ~8,000 generated JPEGs of Dogs-vs-Cats sizes; prints one table.
#
# Made for the GPU machine (one H200, 16 cores, PyTorch and JAX, no TensorFlow, no Keras, no network):
# Keras and the two wheels it lacks travel in .whl/ (see bench/README.md) and are installed into
# /tmp/site when `import keras` fails. About 3-5 minutes there; each backend is given an equal share
# of what is left of HS_CHECK_SECONDS (450) and cut there, so the whole run stays within 8 minutes
# (JAX compiles VGG16 once per batch size that --batch-size auto tries).
#
#   bash bench/device_check.sh                                   # the GPU machine
#   HS_CHECK_N=64 HS_CHECK_BACKBONE=tiny HS_CHECK_BACKENDS=tensorflow \
#     HS_CHECK_WORKERS=2 HS_CHECK_PYTHON=.venv/bin/python bash bench/device_check.sh   # a CPU, tiny size
#
# Settings (environment): HS_CHECK_N (pictures, 8000), HS_CHECK_BACKBONE (vgg16 | mobilenet | tiny),
# HS_CHECK_BACKENDS ("torch jax"), HS_CHECK_PRECISIONS (float16,float32), HS_CHECK_BATCH (auto),
# HS_CHECK_WORKERS (16), HS_CHECK_JOBS (generation processes, the cores), HS_CHECK_SECONDS (450),
# HS_CHECK_WORK (scratch folder, /tmp/headstart-device-check), HS_CHECK_PYTHON (python3),
# HS_CHECK_BACKBONES_SECONDS (150: the every-backbone table at the end; 0 skips it).
# Writes device_check.log and device_check.json to $OUT when it is set, else to the scratch folder.
set -uo pipefail
cd "$(dirname "$0")/.."

N=${HS_CHECK_N:-8000}
BACKBONE=${HS_CHECK_BACKBONE:-vgg16}
BACKENDS=${HS_CHECK_BACKENDS:-torch jax}
PRECISIONS=${HS_CHECK_PRECISIONS:-float16,float32}
BATCH=${HS_CHECK_BATCH:-auto}
WORKERS=${HS_CHECK_WORKERS:-16}
JOBS=${HS_CHECK_JOBS:-$(nproc)}
BUDGET=${HS_CHECK_SECONDS:-450}
WORK=${HS_CHECK_WORK:-/tmp/headstart-device-check}
PY=${HS_CHECK_PYTHON:-python3}
RESULTS=${OUT:-$WORK}
mkdir -p "$WORK" "$RESULTS"
LOG="$RESULTS/device_check.log"
: >"$LOG"
exec > >(tee -a "$LOG") 2>&1
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2
T0=$(date +%s)

echo "== headstart device check $(date -u +%FT%TZ): $N pictures, $BACKBONE, backends: $BACKENDS"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader

if ! "$PY" -c "import keras" 2>/dev/null; then
    if ! ls .whl/*.whl >/dev/null 2>&1; then
        echo "Error: Keras is not installed and .whl/ holds no wheels; see bench/README.md (device check)."
        exit 2
    fi
    echo "== installing $(ls .whl | tr '\n' ' ')into /tmp/site"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || { echo "Error: the wheels in .whl/ did not install."; exit 2; }
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

PICS="$WORK/pictures-$N"
if [ "$(find "$PICS" -name '*.jpg' 2>/dev/null | wc -l)" -ne "$N" ]; then
    rm -rf "$PICS"
    echo "== generating $N JPEGs in $PICS ($JOBS processes)"
    "$PY" bench/device_check.py generate --n "$N" --out "$PICS" --jobs "$JOBS" || exit 2
fi
echo "   after $(( $(date +%s) - T0 )) s"

FILES=()
LEFT_BACKENDS=$(echo $BACKENDS | wc -w)
for backend in $BACKENDS; do
    STEP=$(( (BUDGET - ($(date +%s) - T0)) / LEFT_BACKENDS ))
    LEFT_BACKENDS=$((LEFT_BACKENDS - 1))
    [ "$STEP" -ge 20 ] || STEP=20
    echo "== KERAS_BACKEND=$backend ($PRECISIONS, batch $BATCH, $WORKERS decode workers, at most $STEP s)"
    rm -f "$WORK/$backend.json"
    KERAS_BACKEND=$backend timeout -k 10 "$STEP" "$PY" bench/device_check.py measure --data "$PICS" \
        --json "$WORK/$backend.json" --work "$WORK" --backbone "$BACKBONE" --precisions "$PRECISIONS" \
        --batch-size "$BATCH" --workers "$WORKERS"
    rc=$?
    if [ $rc -ne 0 ]; then
        why="exit $rc$([ $rc -eq 124 ] && echo " (cut at $STEP s)")"
        echo "   $backend: $why"
        [ -f "$WORK/$backend.json" ] || printf '{"rows": [{"backend": "%s", "precision": "all", "error": "%s, no row finished"}]}\n' \
            "$backend" "$why" >"$WORK/$backend.json"
    fi
    FILES+=("$WORK/$backend.json")
    echo "   after $(( $(date +%s) - T0 )) s"
done

echo
echo "== results"
"$PY" bench/device_check.py table "${FILES[@]}" --json "$RESULTS/device_check.json"

# Every backbone on the device, model alone vs pipeline (bench/bench_backbones.py), in what time is left.
BACKBONES_S=${HS_CHECK_BACKBONES_SECONDS:-150}
if [ "$BACKBONES_S" -gt 0 ]; then
    echo
    echo "== backbones table (KERAS_BACKEND=${BACKENDS%% *}, float16,float32, at most $BACKBONES_S s)"
    KERAS_BACKEND=${BACKENDS%% *} timeout -k 10 "$BACKBONES_S" "$PY" bench/bench_backbones.py \
        --precisions float16,float32 --n 64 --batch-size 32 --max-load 1000 --json "$RESULTS/backbones.json" \
        | grep -v '^JSON ' || echo "   backbones table: cut at $BACKBONES_S s or failed (rows above are complete)"
fi
echo "whole check: $(( $(date +%s) - T0 )) s"
