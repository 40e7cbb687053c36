#!/usr/bin/env bash
# One prepared check of everything built for CUDA (issue 21), ordered by value, each step under its own time cap
# so that a slow step cannot eat the rest; the whole run stops at $BUDGET seconds. Writes summary.txt (printed
# last), logs.tar.gz (every step's log, the sweeps' reports) and the key results under $OUT.
#
#   bash benchmarks/gpu_check.sh                # on the GPU machine (the device tool; see docs/performance.md)
#   bash benchmarks/gpu_check.sh --dry-run      # on the CPU: a generated archive, tiny sizes, every step once
#
# On the device machine (torch, lightning, tensorboard there; no hydra-core, omegaconf or antlr4) carry the wheels
# in .whl/ and the IMDB tarball in .data/ (both git-ignored); this script installs the wheels into /tmp/site.
# The device tool returns at most 8 files: run with OUT outside the tool's $OUT, then copy summary.txt,
# logs.tar.gz, precision.json and depth_* there. Allow BUDGET + about 90 s (the last report and archive).
#   1. the CUDA-marked tests            2. precision: dtypes under autocast, bf16-mixed vs 16-mixed vs 32-true
#   3. throughput vs a bare loop         4. time to test accuracy 0.88 (warm cache; the cold start is step 2's)
#   5. one-GPU sweep placement: 8 jobs at n_jobs=1, 4, 8, with GPU utilisation (dry run: 4 jobs at 1, 2)
#   6. with what is left: part of the full-data depth study (GRU, lr 1e-3, depths 1-4, seeds 0-1, 3 epochs)
set -uo pipefail
PY=${PYTHON:-python3}   # the interpreter (the tests pass theirs)
cd "$(dirname "$0")/.."
DRY=0; [ "${1:-}" = "--dry-run" ] && DRY=1
OUT=${OUT:-outputs/gpu_check}; mkdir -p "$OUT/logs"; OUT=$(cd "$OUT" && pwd)
BUDGET=${BUDGET:-480}
START=$(date +%s)
export PYTHONUNBUFFERED=1 STACKED_RNN_CACHE=${STACKED_RNN_CACHE:-/tmp/stacked_rnn_cache}
SUMMARY=$OUT/summary.txt; : > "$SUMMARY"

if [ -d .whl ] && ! "$PY" -c "import hydra, omegaconf" 2>/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || { echo "could not install the carried wheels" | tee -a "$SUMMARY"; exit 1; }
    export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
# stacked_rnn.conf is the top-level conf/ (pyproject's package-dir); without an install, link it into place
[ -e stacked_rnn/conf ] || "$PY" -c "import stacked_rnn.conf" 2>/dev/null || ln -s ../conf stacked_rnn/conf
export PYTHONPATH=$PWD:$PWD/benchmarks:${PYTHONPATH:-}

if [ $DRY = 1 ]; then
    TMP=$(mktemp -d); trap 'rm -rf "$TMP"' EXIT; ARCHIVE=$("$PY" -c "import sys; sys.path.insert(0, 'benchmarks'); from quick import quick_archive; print(quick_archive('$TMP', 60))")
    export STACKED_RNN_CACHE=$TMP/cache
    TINY="data.val_size=20 data.vocab_size=100 data.max_len=32 model.units=16 model.embed_dim=16 data.batch_size=8"
    DEV=trainer=cpu; QUICK=--quick; STEPS=12; JOBS="1 2"; SWEEP_LIMIT=""; SWEEP_SEEDS=0,1; DEPTH_SEEDS=0; TARGET=0.6
    CAP_SCALE=4   # the caps are sized for the GPU; a busy 2-core CPU needs more
    DEPTH_EXTRA="trainer.max_epochs=2"
else
    ARCHIVE=${ARCHIVE:-.data/aclImdb_labelled.tar.gz}
    TINY=""; DEV=trainer=gpu; QUICK=""; STEPS=300; JOBS="1 4 8"; SWEEP_LIMIT="data.limit=5000"; SWEEP_SEEDS=0,1,2,3
    DEPTH_SEEDS=0,1; CAP_SCALE=1
    TARGET=0.88; DEPTH_EXTRA="trainer.max_epochs=3"   # partial: 3 epochs, not the preset's 10
fi

left() { echo $(( BUDGET - ($(date +%s) - START) )); }
pack() { tar -czf "$OUT/logs.tar.gz" --exclude="*.ckpt" --exclude="events.out.*" -C "$OUT" logs 2>/dev/null; }  # no checkpoints: GBs
step() {  # step NAME CAP_SECONDS COMMAND...: run under min(cap, time left), log to logs/NAME.log, record rc and time
    local name=$1 cap=$(( $2 * CAP_SCALE )); shift 2
    local budget; budget=$(left); [ "$cap" -gt "$budget" ] && cap=$budget
    if [ "$cap" -le 10 ]; then echo "$name: skipped, budget spent" | tee -a "$SUMMARY"; return; fi
    local t0; t0=$(date +%s)
    echo "== $name (cap ${cap}s)"
    timeout -k 10 "$cap" "$@" > "$OUT/logs/$name.log" 2>&1
    local rc=$?
    local note=""; [ $rc = 124 ] || [ $rc = 137 ] && note=" (stopped at its cap)"
    echo "$name: rc=$rc in $(( $(date +%s) - t0 )) s$note" | tee -a "$SUMMARY"
    pack
}
gpu_util() {  # gpu_util FILE: sample GPU utilisation and memory every 0.5 s until killed
    command -v nvidia-smi >/dev/null && exec nvidia-smi --query-gpu=utilization.gpu,memory.used \
        --format=csv,noheader,nounits -lms 500 > "$1"
}
sweep() {  # sweep N_JOBS: 8 short full-data jobs on one GPU, N_JOBS at a time, with utilisation sampled
    gpu_util "$OUT/logs/util_n$1.csv" & local sampler=$!
    "$PY" -m stacked_rnn.train -m hydra/launcher=parallel hydra.launcher.n_jobs=$1 model.layers=1,2 seed=$SWEEP_SEEDS \
        data.archive=$ARCHIVE $DEV $SWEEP_LIMIT $TINY trainer.max_epochs=1 trainer.enable_progress_bar=false \
        hydra.sweep.dir=$OUT/logs/sweep_n$1
    local rc=$?; kill $sampler 2>/dev/null; return $rc
}
export -f sweep gpu_util; export PY OUT ARCHIVE DEV SWEEP_LIMIT SWEEP_SEEDS TINY

{ command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader \
    || echo "no nvidia-smi"; } > "$OUT/logs/gpu.txt" 2>&1
"$PY" -c "import torch, lightning; print('torch', torch.__version__, 'lightning', lightning.__version__, 'cuda', torch.cuda.is_available())" >> "$OUT/logs/gpu.txt" 2>&1
cat "$OUT/logs/gpu.txt" | tee -a "$SUMMARY"

step tests 90 "$PY" -m pytest -q -p no:cacheprovider -o addopts="" -rs \
    "tests/test_model.py::test_a_cuda_training_step_waits_for_the_gpu_no_more_than_the_bare_rnn" \
    "tests/test_train.py::test_gpu_trainer_is_32_true_and_auto_resolves_to_32_true"
step precision 150 "$PY" benchmarks/gpu_precision.py --archive "$ARCHIVE" --steps $STEPS $QUICK --out "$OUT/precision.json"
if [ $DRY = 1 ]; then THROUGHPUT="--quick --device cpu"; else THROUGHPUT="--archive $ARCHIVE --device cuda --cache-dir $STACKED_RNN_CACHE"; fi
step throughput 75 "$PY" benchmarks/throughput.py $THROUGHPUT
step time_to_accuracy 100 "$PY" benchmarks/time_to_accuracy.py --target $TARGET data.archive=$ARCHIVE $DEV $TINY
for n in $JOBS; do
    step sweep_n$n $([ $n = 1 ] && echo 90 || echo 60) bash -c 'sweep "$@"' sweep $n
done
# 6. what is left: the full-data depth study for one cell at one learning rate (a partial run, labelled so)
step depth_study_partial 600 "$PY" -m stacked_rnn.train -m experiment=depth_study $DEV data.archive=$ARCHIVE $TINY \
    model.cell=gru model.lr=1e-3 seed=$DEPTH_SEEDS hydra.launcher.n_jobs=8 hydra.sweep.dir=$OUT/logs/depth_study $DEPTH_EXTRA
[ -f "$OUT/logs/depth_study/report.md" ] || [ ! -d "$OUT/logs/depth_study" ] ||  # stopped at its cap: report what finished
    timeout 60 "$PY" -m stacked_rnn.report "$OUT/logs/depth_study" > "$OUT/logs/depth_report.log" 2>&1
for f in report.md accuracy_vs_depth.png convergence.png; do  # one lr: no report_tuned.csv
    [ -f "$OUT/logs/depth_study/$f" ] && cp "$OUT/logs/depth_study/$f" "$OUT/depth_$f"
done
pack

{ echo; echo "== summary ($(( $(date +%s) - START )) s of ${BUDGET})"
  grep -h -E "^(autocast|\| )" "$OUT/logs/precision.log" 2>/dev/null
  grep -h -E "^\| (default|seed) " "$OUT/logs/throughput.log" 2>/dev/null
  grep -h -E "epoch [0-9]+:|test accuracy" "$OUT/logs/time_to_accuracy.log" 2>/dev/null
  for n in $JOBS; do [ -f "$OUT/logs/util_n$n.csv" ] && awk -F', ' -v n=$n '{u+=$1; m=($2>m?$2:m); c++}
      END {if (c) printf "sweep n_jobs=%s: mean GPU util %.0f%%, max memory %d MiB over %d samples\n", n, u/c, m, c}' \
      "$OUT/logs/util_n$n.csv"; done
  grep -h -E "^\| cell=gru" "$OUT/logs/depth_study/report.md" 2>/dev/null | head -8
  true
} | tee -a "$SUMMARY"
exit 0   # each step's own exit status is in summary.txt
