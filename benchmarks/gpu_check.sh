#!/usr/bin/env bash
# Everything only a GPU can show, in one go, each step under its own time limit: 515 s in all, 535 s with the
# 5 s grace after each (a 15-minute GPU session keeps room to rerun a step; the limits are estimates, not yet
# measured on a GPU):
#   tests      tests/test_cuda.py, the slow compile check included                              (limit 110 s)
#   backbones  benchmarks/backbones.py: torch.compile off/on for ResNet-50 and a forced out-of-memory
#              first, then every registered backbone under last_k and full at its own size and 1.25x (limit 240 s)
#   pipeline   benchmarks/pipeline.py, ResNet-50 at 224 px: naive vs harness vs model alone,
#              pipeline efficiency for head-only, last_k and full                                   (limit 120 s)
#   checkpoint benchmarks/checkpoint.py at 224 px: background vs synchronous checkpoint writes      (limit  45 s)
# The benchmarks write their sections into benchmarks/RESULTS.md, named by the card (backbones.py after every
# run, so a step cut by its limit keeps its rows); each step's console output is kept in LOG_DIR (default
# benchmarks/logs). A step that fails or runs out of time is named at the end, and the exit status is 1.
#
#   bash benchmarks/gpu_check.sh [LOG_DIR]                     (PYTHON=path/to/python to pick the interpreter)
#   STEPS="backbones pipeline" bash benchmarks/gpu_check.sh    (some steps only, e.g. a rerun)
#
# Needs torch, torchvision, numpy, pillow, pyyaml and pytest; wandb is not needed (runs use --wandb_mode=disabled).
set -uo pipefail
cd "$(dirname "$0")/.."
logs=${1:-benchmarks/logs}
py=${PYTHON:-python3}  # the interpreter that has torch
all_steps="tests backbones pipeline checkpoint"
steps=${STEPS:-$all_steps}
for name in $steps; do
    case " $all_steps " in *" $name "*) ;; *) echo "gpu_check: unknown step '$name' in STEPS: use some of: $all_steps" >&2; exit 2 ;; esac
done
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
    # --foreground: TERM goes to the step's own process only (a training run ends as preempted and the script
    # stops there), not to its data-loader workers, whose death would read as a crash.
    timeout --foreground --signal=TERM --kill-after=5 "$limit" "$@" 2>&1 | tee "$logs/$name.txt"
    local rc=${PIPESTATUS[0]}
    echo "=== $name: exit $rc after $((SECONDS - started)) s"
    if [ "$rc" -ne 0 ]; then
        status=1
        if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then failed+=("$name (out of time)"); else failed+=("$name (exit $rc)"); fi
    fi
}

step tests 110 "$py" -m pytest -q -p no:cacheprovider -m "slow or not slow" tests/test_cuda.py
step backbones 240 "$py" benchmarks/backbones.py
step pipeline 120 "$py" benchmarks/pipeline.py --model resnet50 --input_size 224 --images_per_class 150 --epochs 5
step checkpoint 45 "$py" benchmarks/checkpoint.py --input_size 224 --batch_size 128 --steps_per_epoch 40

if [ ${#failed[@]} -gt 0 ]; then echo "gpu_check: not passed: ${failed[*]}"; else echo "gpu_check: every step passed"; fi
exit $status
