#!/usr/bin/env bash
# Everything only a GPU can show, in one go (about 10 minutes on an H100): the CUDA tests (the slow compile
# check included), the checkpoint benchmark at 224 px, and the pipeline benchmark with its CUDA defaults
# (resnet50, 224 px, 300 images per class). Both benchmarks write their sections into benchmarks/RESULTS.md;
# the console output of each step is kept in LOG_DIR (default benchmarks/logs).
#
#   bash benchmarks/gpu_check.sh [LOG_DIR]          (PYTHON=path/to/python to pick the interpreter)
#
# Needs torch, torchvision, numpy, pillow, pyyaml and pytest; wandb is not needed (runs use --wandb_mode=disabled).
set -uo pipefail
cd "$(dirname "$0")/.."
logs=${1:-benchmarks/logs}
py=${PYTHON:-python3}  # the interpreter that has torch
mkdir -p "$logs"
"$py" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA GPU is visible: run this on a GPU machine')" || exit 2
export PYTHONUNBUFFERED=1
status=0
nvidia-smi > "$logs/nvidia-smi.txt" 2>&1
"$py" -m pytest -q -p no:cacheprovider -m "slow or not slow" tests/test_cuda.py 2>&1 | tee "$logs/test_cuda.txt" || status=1
"$py" benchmarks/checkpoint.py --input_size 224 --batch_size 128 --steps_per_epoch 40 2>&1 | tee "$logs/checkpoint.txt" || status=1
"$py" benchmarks/pipeline.py 2>&1 | tee "$logs/pipeline.txt" || status=1
exit $status
