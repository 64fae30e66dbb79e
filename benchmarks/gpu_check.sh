#!/usr/bin/env bash
# Everything only a GPU can show, in one go, each step under its own time limit so the whole stays under
# about 9 minutes on an H100 (a session with 15 minutes of GPU time can rerun a step):
#   tests      tests/test_cuda.py, the slow compile check included                              (limit 150 s)
#   backbones  benchmarks/backbones.py: every registered backbone under last_k and full at its own size
#              and 1.25x it, torch.compile off/on for ResNet-50, a forced out-of-memory             (limit 240 s)
#   pipeline   benchmarks/pipeline.py, ResNet-50 at 224 px: naive vs harness vs model alone,
#              pipeline efficiency for head-only, last_k and full                                   (limit 150 s)
#   checkpoint benchmarks/checkpoint.py at 224 px: background vs synchronous checkpoint writes      (limit  60 s)
# The benchmarks write their sections into benchmarks/RESULTS.md, named by the card; each step's console
# output is kept in LOG_DIR (default benchmarks/logs). A step that runs out of time is named at the end.
#
#   bash benchmarks/gpu_check.sh [LOG_DIR]                     (PYTHON=path/to/python to pick the interpreter)
#   STEPS="backbones pipeline" bash benchmarks/gpu_check.sh    (some steps only, e.g. a rerun)
#
# Needs torch, torchvision, numpy, pillow, pyyaml and pytest; wandb is not needed (runs use --wandb_mode=disabled).
set -uo pipefail
cd "$(dirname "$0")/.."
logs=${1:-benchmarks/logs}
py=${PYTHON:-python3}  # the interpreter that has torch
steps=${STEPS:-tests backbones pipeline checkpoint}
mkdir -p "$logs"
"$py" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA GPU is visible: run this on a GPU machine')" || exit 2
export PYTHONUNBUFFERED=1
status=0
failed=()
nvidia-smi > "$logs/nvidia-smi.txt" 2>&1

step() {  # step NAME LIMIT_SECONDS COMMAND...: run it under its limit, keep its output, remember a failure
    local name=$1 limit=$2
    shift 2
    case " $steps " in *" $name "*) ;; *) return ;; esac
    echo "=== $name (limit ${limit} s): $*"
    local started=$SECONDS
    timeout --signal=TERM --kill-after=15 "$limit" "$@" 2>&1 | tee "$logs/$name.txt"
    local rc=${PIPESTATUS[0]}
    echo "=== $name: exit $rc after $((SECONDS - started)) s"
    if [ "$rc" -ne 0 ]; then
        status=1
        if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then failed+=("$name (out of time)"); else failed+=("$name (exit $rc)"); fi
    fi
}

step tests 150 "$py" -m pytest -q -p no:cacheprovider -m "slow or not slow" tests/test_cuda.py
step backbones 240 "$py" benchmarks/backbones.py
step pipeline 150 "$py" benchmarks/pipeline.py --model resnet50 --input_size 224 --images_per_class 200 --epochs 6
step checkpoint 60 "$py" benchmarks/checkpoint.py --input_size 224 --batch_size 128 --steps_per_epoch 40

if [ ${#failed[@]} -gt 0 ]; then echo "gpu_check: not passed: ${failed[*]}"; else echo "gpu_check: every step passed"; fi
exit $status
