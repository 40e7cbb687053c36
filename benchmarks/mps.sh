#!/usr/bin/env bash
# NVIDIA MPS (Multi-Process Service) for several training jobs on one GPU: with the control daemon running, the
# jobs' CUDA contexts share one server and their kernels run side by side instead of taking turns on the GPU.
#
#   eval "$(bash benchmarks/mps.sh start)"   # start the daemon; prints the exports the jobs need (eval them)
#   bash benchmarks/mps.sh status            # running or not, and the directories
#   bash benchmarks/mps.sh stop              # quit the daemon (waits for its clients to end)
#
# The pipe and log directories live under $STACKED_RNN_MPS_DIR (default /tmp/stacked_rnn_mps), not the system's
# /tmp/nvidia-mps, so a daemon of another user or session is never touched; every job must see the same
# CUDA_MPS_PIPE_DIRECTORY (the exports printed by start). Nothing here changes the GPU's compute mode or any other
# setting: MPS also serves clients in the default compute mode.
#
# Fallback: where MPS cannot run (no nvidia-cuda-mps-control, a sandbox such as gVisor, a daemon that starts but
# serves no client), start says so on stderr, leaves nothing running, prints no exports and exits 0: the jobs then
# run as plain concurrent processes, time-sliced by the driver. status and the file $DIR/mode say which it is.
set -uo pipefail
DIR=${STACKED_RNN_MPS_DIR:-/tmp/stacked_rnn_mps}
PY=${PYTHON:-python3}
export CUDA_MPS_PIPE_DIRECTORY=$DIR/pipe CUDA_MPS_LOG_DIRECTORY=$DIR/log
note() { echo "mps: $*" >&2; }

running() { command -v nvidia-cuda-mps-control >/dev/null && [ -e "$CUDA_MPS_PIPE_DIRECTORY/control" ] \
    && echo get_server_list | timeout 10 nvidia-cuda-mps-control >/dev/null 2>&1; }

fall_back() {  # fall_back REASON: nothing left running, plain processes from here on
    note "MPS is not available ($1): jobs will run as plain concurrent processes (time-sliced, no MPS)"
    mkdir -p "$DIR"; echo "plain: $1" > "$DIR/mode"
    exit 0
}

case "${1:-}" in
start)
    if running; then
        note "already running (pipe directory $CUDA_MPS_PIPE_DIRECTORY)"
    else
        command -v nvidia-cuda-mps-control >/dev/null || fall_back "nvidia-cuda-mps-control is not installed"
        command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1 || fall_back "no NVIDIA GPU answers nvidia-smi"
        mkdir -p "$CUDA_MPS_PIPE_DIRECTORY" "$CUDA_MPS_LOG_DIRECTORY"
        nvidia-cuda-mps-control -d 2>"$DIR/start.err" || fall_back "the daemon did not start: $(head -c 300 "$DIR/start.err")"
        sleep 1
        # a client must get through: where the daemon starts but cannot serve (a sandbox), stop it and fall back
        if ! timeout 60 "$PY" -c "import torch; x = torch.ones(1, device='cuda'); torch.cuda.synchronize(); assert x.item() == 1" \
                > "$DIR/client.log" 2>&1; then
            echo quit | timeout 20 nvidia-cuda-mps-control >/dev/null 2>&1
            fall_back "a CUDA client could not run through it: $(tail -n 2 "$DIR/client.log" | tr '\n' ' ' | head -c 300)"
        fi
        note "started: MPS control daemon, pipe directory $CUDA_MPS_PIPE_DIRECTORY, logs in $CUDA_MPS_LOG_DIRECTORY"
    fi
    echo mps > "$DIR/mode"
    echo "export CUDA_MPS_PIPE_DIRECTORY=$CUDA_MPS_PIPE_DIRECTORY CUDA_MPS_LOG_DIRECTORY=$CUDA_MPS_LOG_DIRECTORY"
    ;;
stop)
    if running; then
        echo quit | timeout 60 nvidia-cuda-mps-control >/dev/null 2>&1
        note "stopped"
    else
        note "not running: nothing to stop"
    fi
    rm -f "$DIR/mode"
    ;;
status)
    if running; then
        echo "mps: running (pipe directory $CUDA_MPS_PIPE_DIRECTORY, logs in $CUDA_MPS_LOG_DIRECTORY)"
    else
        echo "mps: not running: jobs run as plain concurrent processes$( [ -f "$DIR/mode" ] && echo " ($(cat "$DIR/mode"))")"
    fi
    ;;
*)
    echo "usage: bash benchmarks/mps.sh start|stop|status   (eval \"\$(bash benchmarks/mps.sh start)\" to export the pipe directory)" >&2
    exit 2
    ;;
esac
