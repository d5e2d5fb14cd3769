#!/usr/bin/env bash
# GPU check of the prediction fast path (about 2-3 minutes on a fresh machine with the repository and .venv).
#
# The paper's network (ResNet-50 two-view, 768 x 256; untrained weights, which do not change speed) predicts
# 400 synthetic paper-sized studies end to end on CUDA, in bf16 (the "auto" choice on a bf16-capable GPU) and in
# fp16 autocast; each run prints seconds and studies/s end to end, model-only studies/s, the GPU's measured
# matmul peaks, the roofline fraction, peak RSS, and parity (max |dp|, decision agreement) against fp32 on the CPU.
# The paper needed 11.3 s for its 400 studies on a GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
BONESCAN=.venv/bin/bonescan
DATA="${DATA:-/tmp/bonescan-gpu-check-studies}"
WORKERS="${WORKERS:-$(( $(nproc) / 2 ))}"

.venv/bin/python - <<'PY'
import torch
assert torch.cuda.is_available(), "no CUDA GPU visible to torch"
print(f"torch {torch.__version__}, {torch.cuda.get_device_name(0)}, bf16 supported: {torch.cuda.is_bf16_supported()}")
PY

for precision in auto fp16; do
  echo "=== bench predict: cuda, precision ${precision}, batch 32, ${WORKERS} reader processes ==="
  # The first run generates the 400 studies into $DATA (not timed); the second reads them.
  "$BONESCAN" bench predict --cases 400 --data "$DATA" --device cuda --precision "$precision" \
    --batch-size 32 --workers "$WORKERS" --parity-cases 32 --model-cases 256
done
