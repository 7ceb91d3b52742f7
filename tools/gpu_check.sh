#!/usr/bin/env bash
# The prepared checks for a machine with a CUDA GPU, in one go (under 8 minutes on one GPU):
#   bash tools/gpu_check.sh REPORT_DIR
# CUDA-marked tests; CoOp, CoCoOp and MuDPT trained one epoch in fp32, amp and fp16 on generated
# data (finite loss); torchrun with 2 processes when 2 GPUs are present; tools/benchmark.py on the
# ViT-B/16-shaped model. Writes REPORT_DIR/gpu_check.json and REPORT_DIR/gpu_check.md.
# The interpreter is $PYTHON, else .venv/bin/python if its torch sees a GPU, else python3.
# Missing pure-Python packages (clip-anytorch, yacs, ftfy, ...) are installed from wheels in .whl/
# when that folder exists (a GPU machine without network: download them elsewhere first).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
[ $# -eq 1 ] || { echo "Usage: bash tools/gpu_check.sh REPORT_DIR" >&2; exit 2; }
REPORT=$1
mkdir -p "$REPORT"

sees_gpu() { "$1" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; }
if [ -n "${PYTHON:-}" ]; then
    PY=$PYTHON
elif [ -x .venv/bin/python ] && sees_gpu .venv/bin/python; then
    PY=.venv/bin/python
else
    PY=python3
fi
sees_gpu "$PY" || { echo "Error: $PY has no CUDA-enabled torch that sees a GPU; set PYTHON=..." >&2; exit 2; }

if ! "$PY" -c "import clip, yacs, ftfy, regex, tabulate, tqdm" 2>/dev/null; then
    if [ -d .whl ]; then
        SITE=$(mktemp -d)
        "$PY" -m pip install -q --no-index --no-deps --no-compile --target "$SITE" .whl/*.whl
        export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
    fi
    "$PY" -c "import clip, yacs, ftfy, regex, tabulate, tqdm" || {
        echo "Error: missing packages; put their wheels (clip-anytorch, yacs, ftfy, ...) in .whl/" >&2; exit 2; }
fi
exec "$PY" tools/gpu_check.py "$REPORT"
