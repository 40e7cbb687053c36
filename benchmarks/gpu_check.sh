#!/usr/bin/env bash
# One prepared check of the CUDA paths (issues 21 and 25) for a lent GPU, ordered by value, each step under its own
# time cap so that a slow step cannot eat the rest; the whole run stops at $BUDGET seconds. Prints a summary table
# last and writes summary.txt, logs.tar.gz (every step's log and the sweeps' reports, no checkpoints) and the key
# results under $OUT; with KEEP=DIR it copies at most 6 files there after every step (the device tool's $OUT takes 8).
#
#   KEEP=$OUT OUT=/tmp/gc BUDGET=480 bash benchmarks/gpu_check.sh    # on the GPU machine (docs/performance.md#gpu)
#   bash benchmarks/gpu_check.sh --dry-run                            # on the CPU: tiny sizes, every step once
#
# On the device machine (torch, lightning, joblib there; no hydra-core, omegaconf, antlr4 or hydra-joblib-launcher)
# carry the wheels in .whl/ and the IMDB tarball in .data/ (both git-ignored); this script installs the wheels into
# /tmp/site. Allow BUDGET + about 60 s (the last report and archive).
#   1. tests             the CUDA tests: test_gpu_path.py's test_cuda_* (padded == packed on cuDNN, no host sync in
#                        a padded step or in cutting batches on the device), test_model.py's packed-step sync test
#                        (never run on a GPU since its rewrite) and trainer=gpu's precision test
#   2. paths             the default GRU and the seed model at 32-true: bare loop, package packed, unpacked, unpacked
#                        with data on the device (benchmarks/gpu_paths.py; ratios to bare, one run); the fastest path
#                        is used from here on
#   3. colocate          N for the depth study: 4 vs 8 identical jobs at once for 30 s each, under MPS when it starts
#                        (benchmarks/mps.sh; else plain concurrent processes, said in the summary)
#      depth_study       experiment=depth_study on the full data, lr 1e-3, seeds 0-2, gru first, N jobs at once, under
#                        a hard cap (what is left minus step 4's cap): the report covers the jobs that finished
#   4. time_to_accuracy  the default recipe at the fastest path, to test accuracy 0.88 (warm cache)
set -uo pipefail
PY=${PYTHON:-python3}   # the interpreter (the tests pass theirs)
cd "$(dirname "$0")/.."
DRY=0; [ "${1:-}" = "--dry-run" ] && DRY=1
OUT=${OUT:-outputs/gpu_check}; rm -rf "$OUT/logs"; mkdir -p "$OUT/logs"; OUT=$(cd "$OUT" && pwd)
KEEP=${KEEP:-}; [ -n "$KEEP" ] && mkdir -p "$KEEP"
BUDGET=${BUDGET:-480}
START=$(date +%s)
export PYTHONUNBUFFERED=1 STACKED_RNN_CACHE=${STACKED_RNN_CACHE:-/tmp/stacked_rnn_cache}
export STACKED_RNN_MPS_DIR=${STACKED_RNN_MPS_DIR:-/tmp/stacked_rnn_mps}
SUMMARY=$OUT/summary.txt; : > "$SUMMARY"

if [ -d .whl ] && ! "$PY" -c "import hydra, omegaconf, hydra_plugins.hydra_joblib_launcher" 2>/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || { echo "could not install the carried wheels" | tee -a "$SUMMARY"; exit 1; }
    export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
# stacked_rnn.conf is the top-level conf/ (pyproject's package-dir); without an install, link it into place
[ -e stacked_rnn/conf ] || "$PY" -c "import stacked_rnn.conf" 2>/dev/null || ln -s ../conf stacked_rnn/conf
export PYTHONPATH=$PWD:$PWD/benchmarks:${PYTHONPATH:-}

# the CUDA tests (test_cuda_* and test_a_cuda_*: skipped without a GPU) and trainer=gpu's precision; the CPU tests of
# test_gpu_path.py run in CI
TESTS="tests/test_model.py tests/test_train.py::test_gpu_trainer_is_32_true_and_auto_resolves_to_32_true
       tests/test_gpu_path.py"
if [ $DRY = 1 ]; then
    TMP=$(mktemp -d); trap 'rm -rf "$TMP"' EXIT
    ARCHIVE=$("$PY" -c "from quick import quick_archive; print(quick_archive('$TMP', 60))")
    export STACKED_RNN_CACHE=$TMP/cache STACKED_RNN_MPS_DIR=$TMP/mps
    TINY="data.val_size=20 data.vocab_size=100 data.max_len=32 model.units=16 model.embed_dim=16 data.batch_size=8"
    DEV=trainer=cpu
    PATHS="--quick --device cpu"; JOBS=1,2; PROBE_S=8; WARM=1
    PROBE="model.cell=gru model.layers=1 model.lr=1e-3 seed=0,1 trainer.max_epochs=1000 callbacks.early_stopping=null"
    DEPTH="model.cell=gru model.layers=1,2 model.lr=1e-3 seed=0 trainer.max_epochs=2"
    TARGET=0.6; TTA_EXTRA="trainer.max_epochs=8 model.lr=1e-2"
    CAP_SCALE=3   # the caps are sized for the GPU; a busy 2-core CPU needs more
else
    ARCHIVE=${ARCHIVE:-.data/aclImdb_labelled.tar.gz}
    TINY=""; DEV=trainer=gpu
    PATHS="--archive $ARCHIVE --device cuda --cache-dir $STACKED_RNN_CACHE"; JOBS=4,8; PROBE_S=30; WARM=3
    PROBE="model.cell=gru model.layers=2 model.lr=1e-3 seed=0,1,2,3,4,5,6,7"   # identical jobs: rates compare
    DEPTH="model.cell=gru,lstm,rnn model.lr=1e-3 seed=0,1,2"   # 36 jobs, gru first: the default cell finishes first
    TARGET=0.88; TTA_EXTRA=""
    CAP_SCALE=1
fi
TTA_CAP=75

left() { echo $(( BUDGET - ($(date +%s) - START) )); }
pack() { tar -czf "$OUT/logs.tar.gz" --exclude="*.ckpt" --exclude="events.out.*" -C "$OUT" logs 2>/dev/null; }  # no checkpoints: GBs
keep() {  # the files worth fetching, copied after every step (a run stopped early still returns them)
    [ -n "$KEEP" ] || return 0
    for f in summary.txt logs.tar.gz paths.json depth_report.md depth_accuracy_vs_depth.png depth_convergence.png; do
        [ -f "$OUT/$f" ] && cp "$OUT/$f" "$KEEP/"
    done
    return 0
}
step() {  # step NAME CAP_SECONDS COMMAND...: run under min(cap, time left), log to logs/NAME.log, record rc and time
    local name=$1 cap=$(( $2 * CAP_SCALE )); shift 2
    local budget; budget=$(left); [ "$cap" -gt "$budget" ] && cap=$budget
    if [ "$cap" -le 10 ]; then echo "$name: skipped, budget spent" | tee -a "$SUMMARY"; return; fi
    local t0; t0=$(date +%s)
    echo "== $name (cap ${cap}s)"
    timeout -k 10 "$cap" "$@" > "$OUT/logs/$name.log" 2>&1
    local rc=$?
    local note=""; { [ $rc = 124 ] || [ $rc = 137 ]; } && note=" (stopped at its cap)"
    echo "$name: rc=$rc in $(( $(date +%s) - t0 )) s$note" | tee -a "$SUMMARY"
    pack; keep
}
gpu_util() {  # gpu_util FILE: sample GPU utilisation and memory every 0.5 s until killed
    command -v nvidia-smi >/dev/null && exec nvidia-smi --query-gpu=utilization.gpu,memory.used \
        --format=csv,noheader,nounits -lms 500 > "$1"
}
prepare_data() {  # the token cache, built once before jobs run side by side (they would all build it)
    "$PY" -c "
import sys
from hydra import compose, initialize_config_module
from hydra.utils import instantiate
with initialize_config_module('stacked_rnn.conf', version_base='1.3'):
    cfg = compose('train', overrides=sys.argv[1:] + ['output_dir=/tmp/prepare', 'data.progress=false'])
instantiate(cfg.data).prepare_data()" data.archive="$ARCHIVE" $TINY
}
depth_study() {  # the sweep (under MPS when it started), GPU utilisation sampled
    gpu_util "$OUT/logs/util_depth.csv" & local sampler=$!
    "$PY" -m stacked_rnn.train -m experiment=depth_study $DEV data.archive=$ARCHIVE $TINY $DEPTH $FASTEST \
        hydra/launcher=gpu_shared hydra.launcher.n_jobs=$N_JOBS hydra.sweep.dir=$OUT/logs/depth_study
    local rc=$?; kill $sampler 2>/dev/null; return $rc
}
export -f depth_study gpu_util; export PY OUT ARCHIVE DEV TINY DEPTH

{ command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader \
    || echo "no nvidia-smi"; } > "$OUT/logs/gpu.txt" 2>&1
"$PY" -c "import torch, lightning; print('torch', torch.__version__, 'lightning', lightning.__version__, 'cuda', torch.cuda.is_available(), 'cudnn', torch.backends.cudnn.version())" >> "$OUT/logs/gpu.txt" 2>&1
echo "cores $(nproc)" >> "$OUT/logs/gpu.txt"
cat "$OUT/logs/gpu.txt" | tee -a "$SUMMARY"

# 1. the CUDA tests
# shellcheck disable=SC2086
step tests 60 "$PY" -m pytest -q -p no:cacheprovider -o addopts="" -rs $TESTS -k "cuda or gpu_trainer"

# 2. the paths, at 32-true: the fastest package variant of the default GRU is used by the steps after it
: > "$OUT/logs/fastest.txt"
step paths 100 "$PY" benchmarks/gpu_paths.py $PATHS --json "$OUT/paths.json" --fastest "$OUT/logs/fastest.txt"
FASTEST=$(cat "$OUT/logs/fastest.txt"); export FASTEST
echo "fastest path: ${FASTEST:-(none measured: the defaults)}" | tee -a "$SUMMARY"

# 3. the full-data depth study, N jobs at once, N from a probe of 4 vs 8, under MPS when it starts
MPS_EXPORTS=$(bash benchmarks/mps.sh start 2> "$OUT/logs/mps.log"); eval "$MPS_EXPORTS"
trap 'bash benchmarks/mps.sh stop 2>/dev/null; [ -n "${TMP:-}" ] && rm -rf "$TMP"' EXIT
MPS_MODE=$(cat "$STACKED_RNN_MPS_DIR/mode" 2>/dev/null || echo unknown)
echo "mps: $MPS_MODE" | tee -a "$SUMMARY"
prepare_data > "$OUT/logs/prepare_data.log" 2>&1
# shellcheck disable=SC2086
step colocate 80 "$PY" benchmarks/colocate.py --jobs $JOBS --seconds $PROBE_S --warm $WARM \
    --choose "$OUT/logs/n_jobs.txt" --dir "$OUT/logs/colocate" -- $DEV data.archive=$ARCHIVE $TINY $PROBE $FASTEST \
    experiment=depth_study
N_JOBS=$(cat "$OUT/logs/n_jobs.txt" 2>/dev/null || echo "${JOBS%%,*}"); export N_JOBS
echo "n_jobs: $N_JOBS" | tee -a "$SUMMARY"
rm -rf "$OUT/logs/colocate"/n*/*/checkpoints
DEPTH_CAP=$(( ($(left) - TTA_CAP * CAP_SCALE - 20) / CAP_SCALE )); [ $DEPTH_CAP -gt 420 ] && DEPTH_CAP=420
step depth_study $DEPTH_CAP bash -c depth_study
bash benchmarks/mps.sh stop 2>> "$OUT/logs/mps.log"; unset CUDA_MPS_PIPE_DIRECTORY CUDA_MPS_LOG_DIRECTORY
[ -f "$OUT/logs/depth_study/report.md" ] || [ ! -d "$OUT/logs/depth_study" ] ||  # stopped at its cap: what finished
    timeout 60 "$PY" -m stacked_rnn.report "$OUT/logs/depth_study" > "$OUT/logs/depth_report.log" 2>&1
for f in report.md accuracy_vs_depth.png convergence.png; do  # one lr: no report_tuned.csv
    [ -f "$OUT/logs/depth_study/$f" ] && cp "$OUT/logs/depth_study/$f" "$OUT/depth_$f"
done
pack; keep

# 4. time to test accuracy 0.88, the default recipe at the fastest path
# shellcheck disable=SC2086
step time_to_accuracy $TTA_CAP "$PY" benchmarks/time_to_accuracy.py --target $TARGET data.archive=$ARCHIVE $DEV $TINY \
    $FASTEST $TTA_EXTRA

{ echo; echo "== summary ($(( $(date +%s) - START )) s of ${BUDGET}; $(head -n 1 "$OUT/logs/gpu.txt"); mps: $MPS_MODE)"
  echo "| step | status | result |"; echo "|---|---|---|"
  status() { grep -h -E "^$1: " "$SUMMARY" | tail -n 1 | cut -d' ' -f2- ; }
  echo "| 1. tests | $(status tests) | $(grep -h -E '^[0-9]+ (passed|failed)|(passed|failed|skipped)( in|,)' "$OUT/logs/tests.log" | tail -n 1) |"
  echo "| 2. paths | $(status paths) | $(grep -h '^fastest package variant' "$OUT/logs/paths.log" | tail -n 1) |"
  echo "| 3. colocate | $(status colocate) | n_jobs=$N_JOBS chosen; $(grep -h -E '^\| [0-9]+ \|' "$OUT/logs/colocate.log" | awk -F' [|] ' '{printf "%s jobs: %s samples/s; ", $1, $3}' | tr -d '|') |"
  finished=$(grep -l '"status": "ok"' "$OUT"/logs/depth_study/*/results.json 2>/dev/null | wc -l)
  jobs=$(find "$OUT/logs/depth_study" -mindepth 1 -maxdepth 1 -type d ! -name report ! -name .submitit 2>/dev/null | wc -l)
  util=$([ -s "$OUT/logs/util_depth.csv" ] && awk -F', ' '{u+=$1; m=($2>m?$2:m); c++} END {printf "mean GPU util %.0f%%, max %d MiB", u/c, m}' "$OUT/logs/util_depth.csv")
  echo "| 3. depth_study | $(status depth_study) | $finished of $jobs started jobs finished (36 in the study); ${util:-no GPU samples} |"
  echo "| 4. time_to_accuracy | $(status time_to_accuracy) | $(grep -h -E '^test accuracy' "$OUT/logs/time_to_accuracy.log") |"
  echo; tac "$OUT/logs/paths.log" 2>/dev/null | sed '/^torch /q' | tac | grep -E "^(\| |torch )"  # the last table
  echo; grep -h -E "^\| " "$OUT/logs/colocate.log" 2>/dev/null
  echo; grep -h -E "^\| cell=" "$OUT/logs/depth_study/report.md" 2>/dev/null | head -12
  echo; grep -h -E "epoch [0-9]+:" "$OUT/logs/time_to_accuracy.log" 2>/dev/null
  true
} | tee -a "$SUMMARY"
pack; keep
exit 0   # each step's own exit status is in summary.txt
