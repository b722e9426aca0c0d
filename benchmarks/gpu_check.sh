#!/usr/bin/env bash
# One prepared check on a lent GPU, under 10 minutes in all: the device/precision/packing tests on CUDA, the
# throughput benchmark on CUDA (packed_speedup at K = 4, 8, 16 included), and a short Fashion-MNIST study on CUDA,
# three seeds (each method's seeds trained as one pack). Needs no network.
#
#   benchmarks/gpu_check.sh OUTDIR
#   GPU_CHECK_DRY_RUN=1 benchmarks/gpu_check.sh OUTDIR    # CPU, tiny sizes, synthetic data: checks the script
#
# Writes into OUTDIR: gpu_check.log (one line per step: wall seconds, exit status, command), nvidia-smi.txt,
# <step>.out (each step's stdout and stderr), pytest.xml, throughput-cuda.json, study-cuda.json, ck/.
# Every step runs under `timeout`; a failed step does not stop the next ones, but the script exits 1 at the
# end when any step failed (2: bad arguments).
#
# Environment:
#   PYTHON            interpreter (default: .venv/bin/python if it imports torch, else python3, else python)
#   KD_DATA_DIR       dataset folder for the study (default ./data; the loader also looks in
#                     /usr/share/datasets/fashion-mnist). Without network, carry Fashion-MNIST along, e.g.
#                     `mkdir -p data && cp -r /usr/share/datasets/fashion-mnist data/` and carry `data`.
#   GPU_CHECK_DRY_RUN 1: run every step on the CPU with tiny sizes (throughput --short, a synthetic study of one
#                     epoch); a missing nvidia-smi is then skipped, not failed.
set -euo pipefail

usage="usage: benchmarks/gpu_check.sh OUTDIR   (GPU_CHECK_DRY_RUN=1 for a CPU dry run with tiny sizes)"
if [[ $# -ne 1 || -z "${1:-}" ]]; then
    echo "$usage" >&2
    exit 2
fi
case "$1" in -h | --help) echo "$usage"; exit 0 ;; esac

# Seconds allowed per step: 20 + 300 (only when kd_utils does not import) + 150 + 180 + 210 stays under 10 minutes
# in the usual case, where the install step is skipped.
LIMIT_NVIDIA_SMI=20
LIMIT_INSTALL=300
LIMIT_PYTEST=150
LIMIT_THROUGHPUT=180
LIMIT_STUDY=210

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
mkdir -p "$1"
out=$(cd "$1" && pwd)
cd "$repo"
log="$out/gpu_check.log"
: >"$log"
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}" # kd_utils from this checkout, installed or not
export MPLBACKEND=Agg
dry_run=${GPU_CHECK_DRY_RUN:-0}
data_dir=${KD_DATA_DIR:-./data}

pick_python() {
    local candidate
    for candidate in .venv/bin/python python3 python; do
        if command -v "$candidate" >/dev/null 2>&1 && "$candidate" -c "import torch" >/dev/null 2>&1; then
            echo "$candidate"
            return
        fi
    done
    echo python
}
py=${PYTHON:-$(pick_python)}

failed=()
note() { echo "$(date -u +%FT%TZ) $*" | tee -a "$log"; }

# step NAME LIMIT_S COMMAND...: run COMMAND under `timeout`, its output into OUTDIR/NAME.out; log wall time and status
step() {
    local name=$1 limit=$2
    shift 2
    local t0 t1 rc=0
    t0=$(date +%s.%N)
    timeout --kill-after=10 "$limit" "$@" >"$out/$name.out" 2>&1 || rc=$?
    t1=$(date +%s.%N)
    local verdict=ok
    if ((rc == 124 || rc == 137)); then
        verdict="TIMED OUT"
    elif ((rc != 0)); then
        verdict=FAILED
    fi
    note "$(printf 'step %-10s %-9s rc %3d %7.1fs (limit %ss): %s' "$name" "$verdict" "$rc" \
        "$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')" "$limit" "$*")"
    if ((rc != 0)); then
        failed+=("$name")
        tail -n 5 "$out/$name.out" | sed 's/^/    /' | tee -a "$log"
    fi
}

if [[ $dry_run == 1 ]]; then # a shared CPU is far slower than the GPU: the limits only catch a hang here
    LIMIT_PYTEST=600 LIMIT_THROUGHPUT=600 LIMIT_STUDY=600
    device=cpu
    throughput_args=(--short --device cpu --json "$out/throughput-cpu-dry-run.json")
    study_args=(--dataset synthetic --train-size 200 --val-size 50 --test-size 50 --epochs 1 --teacher-epochs 1
        --allow-weak-teacher --device cpu --results-path "$out/study-cpu-dry-run.json")
else
    device=cuda
    throughput_args=(--device cuda --json "$out/throughput-cuda.json")
    study_args=(--dataset fashion-mnist --data-dir "$data_dir" --no-download --train-size 10000 --epochs 3
        --teacher-epochs 3 --seeds 0 1 2 --device cuda --results-path "$out/study-cuda.json")  # seeds: one pack each
fi
note "gpu_check: repo $repo | python $py | device $device | dry run $dry_run | out $out"

if command -v nvidia-smi >/dev/null 2>&1; then
    step nvidia-smi "$LIMIT_NVIDIA_SMI" nvidia-smi
    cp "$out/nvidia-smi.out" "$out/nvidia-smi.txt"
elif [[ $dry_run == 1 ]]; then
    note "step nvidia-smi skipped: not found (dry run)"
else
    note "step nvidia-smi FAILED: not found"
    failed+=(nvidia-smi)
fi
step versions 60 "$py" -c "import sys, torch; print(sys.version); print('torch', torch.__version__, 'cuda', \
torch.version.cuda, 'available', torch.cuda.is_available()); torch.cuda.is_available() and print( \
torch.cuda.get_device_name(), 'capability', torch.cuda.get_device_capability())"

if ! "$py" -c "import kd_utils" >/dev/null 2>&1; then # a bare interpreter: install what the project needs
    step install "$LIMIT_INSTALL" "$py" -m pip install --retries 1 --timeout 10 -r requirements.txt -e .
fi

step pytest "$LIMIT_PYTEST" "$py" -m pytest -q -p no:cacheprovider -k "cuda or precision or device or packed" \
    --junitxml "$out/pytest.xml" tests
step throughput "$LIMIT_THROUGHPUT" "$py" benchmarks/throughput.py "${throughput_args[@]}"
step study "$LIMIT_STUDY" "$py" -m kd_utils run --experiment all "${study_args[@]}" \
    --checkpoint-dir "$out/ck" --no-progress

if ((${#failed[@]} > 0)); then
    note "gpu_check: FAILED steps: ${failed[*]}"
    exit 1
fi
note "gpu_check: all steps passed"
