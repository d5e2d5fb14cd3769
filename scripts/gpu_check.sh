#!/usr/bin/env bash
# GPU check of prediction: the engines on CUDA, the int8 engine's gate, and a torchrun prediction job
# (about 6-8 minutes on a fresh machine with the repository and .venv).
#
# 1. The paper's network (ResNet-50 two-view, 768 x 256; untrained weights, which do not change speed) predicts
#    400 synthetic paper-sized studies end to end on CUDA, in bf16 (the "auto" choice on a bf16-capable GPU) and in
#    fp16 autocast; each run prints seconds and studies/s end to end, model-only studies/s, the GPU's measured
#    matmul peaks, the roofline fraction, peak RSS, and parity (max |dp|, decision agreement) against fp32 on the
#    CPU. The paper needed 11.3 s for its 400 studies on a GPU.
# 2. A small run trained on the GPU (cpu-small, 2 epochs, bf16): `bonescan quantize` builds and gates its int8
#    engine (ONNX Runtime on the CPU: the GPU has no int8 path here), and `bonescan predict` names the engine it
#    runs on the GPU (torch, bf16 autocast) and on the CPU (the stored exported engine).
# 3. The same studies predicted by a 2-process torchrun job (both ranks share the one GPU) and by one process:
#    the merged output must list the same studies with the same decisions.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-.venv/bin/python}"  # the Python that runs bonescan (on a machine without .venv: PY=python3)
BONESCAN="${BONESCAN:-$PY -m bonescan}"
DATA="${DATA:-/tmp/bonescan-gpu-check-studies}"
WORK="${WORK:-/tmp/bonescan-gpu-check}"
WORKERS="${WORKERS:-$(( $(nproc) / 2 ))}"
mkdir -p "$WORK"

"$PY" - <<'PY'
import torch
assert torch.cuda.is_available(), "no CUDA GPU visible to torch"
print(f"torch {torch.__version__}, {torch.cuda.get_device_name(0)}, bf16 supported: {torch.cuda.is_bf16_supported()}")
PY

for precision in auto fp16; do
  echo "=== bench predict: cuda, precision ${precision}, batch 32, ${WORKERS} reader processes ==="
  # The first run generates the 400 studies into $DATA (not timed); the second reads them.
  $BONESCAN bench predict --cases 400 --data "$DATA" --device cuda --precision "$precision" \
    --batch-size 32 --workers "$WORKERS" --parity-cases 32 --model-cases 256 --engine torch --no-cold-start
done

echo "=== a small run trained on the GPU; int8 gate; the engine predict chooses on GPU and CPU ==="
$BONESCAN synth --cases 120 --difficulty easy --out "$WORK/cohort" --workers "$WORKERS" >/dev/null
$BONESCAN cohort split --manifest "$WORK/cohort/manifest.csv" --out "$WORK/split.csv" --seed 0
$BONESCAN train --manifest "$WORK/split.csv" --out "$WORK/run" --preset cpu-small --epochs 2 --device cuda \
  --cache-dir "$WORK/cache" --force --quiet
$BONESCAN evaluate --run "$WORK/run" --manifest "$WORK/split.csv" --out "$WORK/eval" >/dev/null
$BONESCAN quantize --run "$WORK/run" --manifest "$WORK/split.csv" || echo "(int8 refused by its gate: figures above)"
$BONESCAN predict --run "$WORK/run" --manifest "$WORK/split.csv" --split test --out "$WORK/gpu.json"
$BONESCAN predict --run "$WORK/run" --manifest "$WORK/split.csv" --split test --device cpu --out "$WORK/cpu.json"
"$PY" - "$WORK" <<'PY'
import json, sys
work = sys.argv[1]
for name in ("gpu", "cpu"):
    report = json.load(open(f"{work}/{name}.json"))
    print(f"{name}: engine {report.get('engine')}; notices {report.get('engine_notices')}")
PY

echo "=== torchrun: 2 processes vs 1 on the GPU ==="
"$PY" -m torch.distributed.run --standalone --nproc_per_node=2 -m bonescan -- predict --run "$WORK/run" \
  --manifest "$WORK/split.csv" --split test --device cuda --out "$WORK/ddp.csv"
$BONESCAN predict --run "$WORK/run" --manifest "$WORK/split.csv" --split test --device cuda --out "$WORK/one.csv"
"$PY" - "$WORK" <<'PY'
import sys
import pandas as pd
work = sys.argv[1]
ddp, one = pd.read_csv(f"{work}/ddp.csv"), pd.read_csv(f"{work}/one.csv")
assert list(ddp["case_id"]) == list(one["case_id"]), "torchrun output lists other studies or another order"
assert (ddp["decision"] == one["decision"]).all(), "torchrun decisions differ"
print(f"torchrun output matches: {len(one)} studies, max |dp| {float((ddp['probability'] - one['probability']).abs().max()):.2e}")
PY
