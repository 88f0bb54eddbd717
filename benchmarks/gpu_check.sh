#!/usr/bin/env bash
# GPU check, for a machine with CUDA and torch/transformers/peft already installed
# (the package itself is used from the source tree): the tiny-model test suite on the
# GPU, then the adapter benchmark on a random-init MiniLM-shaped BERT.
# Usage: OUT=/some/dir bash benchmarks/gpu_check.sh
set -u
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export ROBUSTFEAT_TEST_DEVICE=cuda HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, transformers, peft, safetensors; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__, 'safetensors', safetensors.__version__)"
# the real-model test needs the MiniLM asset package, which is not on the GPU image
python3 -m pytest -q -p no:cacheprovider -m "not real_model" tests/ 2>&1 | tee "$OUT/tests_gpu.txt" | tail -25
for shape in "32 64" "128 128"; do
  set -- $shape
  python3 benchmarks/bench_adapters.py --model random-minilm --device cuda --batch "$1" --seq "$2" \
    --steps 60 --rounds 6 --warmup 5 --json "$OUT/bench_gpu_b$1_s$2.json" 2>&1 \
    | grep -v -i -E "warn|^\s*$" | tee "$OUT/bench_gpu_b$1_s$2.txt"
done
