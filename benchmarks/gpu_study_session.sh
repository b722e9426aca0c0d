#!/usr/bin/env bash
# One call on a lent GPU that also trains the stored study: nvidia-smi and versions; the throughput benchmark
# alone (clean timings); then the CUDA/precision/device tests beside the study's runs (benchmarks/gpu_study.py,
# several at once) until a deadline; everything packed into OUTDIR as at most 6 files (the device tool brings
# back 8). benchmarks/gpu_check.sh is the shorter check for a GPU lent when the study needs nothing.
#
#   benchmarks/gpu_study_session.sh OUTDIR [END_S]
#
# END_S: seconds after the start by which the runs are stopped and packed (default 480). Carry `data`
# (data/fashion-mnist/*.gz) and, where the machine lacks optuna, its wheels in `.whl` (installed to /tmp/site).
# Writes OUTDIR/check.tgz (nvidia-smi.txt, versions.txt, throughput-cuda.json, throughput.out, pytest.xml,
# pytest.out), OUTDIR/study.log and OUTDIR/runs-<k>.tgz (run folders, sweep results, job logs: untar in the
# checkout). GPU_STUDY_DRY_RUN=1: CPU, smoke profile, short benchmark (checks this script).
set -uo pipefail
[[ $# -ge 1 ]] || { echo "usage: benchmarks/gpu_study_session.sh OUTDIR [END_S]" >&2; exit 2; }
out=$(mkdir -p "$1" && cd "$1" && pwd)
end_s=${2:-480}
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg
py=python3
[[ -x .venv/bin/python ]] && .venv/bin/python -c "import torch" 2>/dev/null && py=.venv/bin/python
if ls .whl/*.whl >/dev/null 2>&1 && ! $py -c "import optuna" 2>/dev/null; then
    $py -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
check=/tmp/gpu-study-check
rm -rf "$check" && mkdir -p "$check"
if [[ ${GPU_STUDY_DRY_RUN:-0} == 1 ]]; then
    bench=(--short --device cpu) study=(--profile smoke --output-dir /tmp/gpu-study-dry --workers 2 --threads 1)
    tests=(-k "precision")
else
    bench=(--device cuda) study=(--workers 7 --threads 2) tests=(-k "cuda or precision or device")
fi
stamp() { echo "$(date -u +%T) ${SECONDS}s $*" | tee -a "$out/study.log"; }

stamp "start: $($py -c 'import torch; print(torch.__version__, torch.cuda.is_available())' 2>&1)"
nvidia-smi >"$check/nvidia-smi.txt" 2>&1
$py -c "import sys, torch; print(sys.version); print('torch', torch.__version__, 'cuda', torch.version.cuda); \
torch.cuda.is_available() and print(torch.cuda.get_device_name(), torch.cuda.get_device_capability())" \
    >"$check/versions.txt" 2>&1
timeout 150 $py benchmarks/throughput.py "${bench[@]}" --json "$check/throughput-cuda.json" >"$check/throughput.out" 2>&1
stamp "throughput rc $?"
(timeout 300 $py -m pytest -q -p no:cacheprovider "${tests[@]}" --junitxml "$check/pytest.xml" tests \
    >"$check/pytest.out" 2>&1; echo "rc $?" >>"$check/pytest.out") &
tests_pid=$!
deadline=$((end_s - SECONDS - 20))
stamp "study: deadline ${deadline}s"
$py benchmarks/gpu_study.py "${study[@]}" --deadline-s "$deadline" --archive-dir "$out" >>"$out/study.log" 2>&1
stamp "study rc $?"
timeout 60 tail --pid=$tests_pid -f /dev/null
kill $tests_pid 2>/dev/null
stamp "tests: $(tail -n 2 "$check/pytest.out" | tr '\n' ' ')"
tar -czf "$out/check.tgz" -C /tmp gpu-study-check
stamp "done"
