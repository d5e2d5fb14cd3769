#!/usr/bin/env bash
# The test suite as a CPU without native bf16 would run it (AVX2 only, e.g. AMD EPYC): on a Xeon with AMX, this
# checks the fp32 defaults and engine choices that CI on such a CPU takes. Arguments go to pytest.
#   scripts/test_as_avx2.sh                 # the whole suite (make test must have created .venv)
#   scripts/test_as_avx2.sh tests/test_train_device.py -x
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
[[ -x "$root/.venv/bin/python" ]] || { echo "no $root/.venv: run make test first" >&2; exit 2; }
cd "$root"
PYTHONPATH="$root/scripts/avx2_emulation${PYTHONPATH:+:$PYTHONPATH}" ONEDNN_MAX_CPU_ISA=AVX2 \
    exec "$root/.venv/bin/python" -m pytest "$@"
