#!/usr/bin/env bash
# The GPU check, for a machine with a CUDA GPU; under 6 minutes on one H100.
#   bash benchmarks/gpu_check.sh
# 1. the CUDA tests (pytest -m cuda), 2. training throughput of a ResNet-50-sized model on
# synthetic 3x224x224 data in fp32, bf16 and bf16 + channels_last + compile, each beside a
# hand-written loop on the same GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
python -m pytest -q -m cuda -p no:cacheprovider
timeout 300 python benchmarks/gpu_throughput.py
