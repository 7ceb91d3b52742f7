#!/usr/bin/env bash
# Create the project's virtual environment at .venv/ (once) and install the requirements.
# Usage: bash tools/setup_env.sh [--dev]   (--dev adds the test runner)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PYTHON_BIN="${PYTHON_BIN:-python3}"
STAMP="$VENV/.installed"
if [ ! -x "$VENV/bin/python" ]; then
    echo "Creating virtual environment in .venv/"
    "$PYTHON_BIN" -m venv "$VENV"
fi
WANT="$(cat "$ROOT/requirements.txt")"
[ "${1:-}" = "--dev" ] && WANT="$WANT pytest"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
    echo "Installing requirements (CPU torch 2.13.0; takes about a minute) ..."
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$ROOT/requirements.txt"
    if [ "${1:-}" = "--dev" ]; then
        "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check pytest
    fi
    printf '%s' "$WANT" > "$STAMP"
fi
