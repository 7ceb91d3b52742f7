#!/usr/bin/env bash
# Set up .venv/ if needed and run the test suite (CPU, tiny random CLIP and the mini-CLIP, generated datasets).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
bash tools/setup_env.sh --dev
exec .venv/bin/python -m pytest -q "$@" tests
