#!/usr/bin/env bash
# The GPU checks of the real-model path, one command for whoever holds a CUDA GPU:
#
#   scripts/gpu_check.sh [OUT_DIR]        # default OUT_DIR: runs/gpu_check
#
# 1. python -m bench.micro.gpu_suite: SD-1.5 shapes with random weights (nothing downloaded), batch 16,
#    50 DDIM steps, fp16; actor vs a plain diffusers loop, eager and actors.compile=true; learner
#    step vs a plain LoRA step; peak memory of each; actor and learner alone at batch 8 against
#    24 GB. Log in OUT_DIR/gpu_suite.log, its JSON last line in OUT_DIR/gpu_suite.json.
# 2. pytest -m gpu tests/gpu (the suite at SD-1.5 shapes, batch 2, and the precision checks).
#    Log in OUT_DIR/pytest_gpu.log.
# Each step has its own timeout (6 + 2.5 minutes); nothing needs the network. PYTHON picks the
# interpreter (default .venv/bin/python, else python). Exit status 0 only when both passed.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/gpu_check}
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 HF_HUB_DISABLE_PROGRESS_BARS=1
if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "gpu_check: torch sees no CUDA device; nothing to measure here" >&2
    exit 2
fi
nvidia-smi > "$OUT/nvidia_smi.txt" 2>&1 || true
git rev-parse HEAD > "$OUT/commit.txt" 2>/dev/null || true

timeout 360 "$PY" -m bench.micro.gpu_suite 2>&1 | tee "$OUT/gpu_suite.log"
suite=${PIPESTATUS[0]}
tail -n 1 "$OUT/gpu_suite.log" > "$OUT/gpu_suite.json"

CU_TEST_THREADS=$(nproc) timeout 150 "$PY" -m pytest -m gpu tests/gpu -q -p no:cacheprovider \
    2>&1 | tee "$OUT/pytest_gpu.log"
tests=${PIPESTATUS[0]}

echo "gpu_check: bench.micro.gpu_suite exit $suite, pytest -m gpu exit $tests; results in $OUT/"
[ "$suite" -eq 0 ] && [ "$tests" -eq 0 ]
