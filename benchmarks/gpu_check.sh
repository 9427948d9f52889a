#!/usr/bin/env bash
# The GPU check, for a machine with a CUDA GPU; about 8 minutes on one H100 or H200.
#   bash benchmarks/gpu_check.sh
# 1. the CUDA tests (pytest -m cuda): training, resume, inference, torchrun, compile, pinned checkpoint
#    snapshots and on-device data; 2. per-epoch wall time of the template beside a hand-written loop
#    (CIFAR-sized ResNet-18 and ResNet-50 at 224 in bf16, worker processes and on-device data, data_wait),
#    with the targets: template <= 1.05x the hand-written loop (ResNet-18, workers), on-device data
#    >= 1.5x the images per second of worker processes.
set -euo pipefail
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
timeout 300 python -m pytest -q -m cuda -p no:cacheprovider -n 0
timeout 420 python benchmarks/gpu_throughput.py
