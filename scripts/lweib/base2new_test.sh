#!/usr/bin/env bash
# Base-to-new: evaluate the base-trained model on the new classes. Usage: base2new_test.sh DATASET SEED [KEY VALUE ...]
# Environment: DATA, CLIP_PATH, OUTPUT, PYTHON, GPU, DRY_RUN (see scripts/README.md).
HERE=$(dirname "${BASH_SOURCE[0]}")
exec bash "$HERE/../common/run.sh" base2new_test "$HERE" "$@"
