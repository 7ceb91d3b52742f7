#!/usr/bin/env bash
# Base-to-new: train on the base classes. Usage: base2new_train.sh DATASET SEED [KEY VALUE ...]
# Environment: DATA, CLIP_PATH, OUTPUT, PYTHON, GPU, DRY_RUN (see scripts/README.md).
HERE=$(dirname "${BASH_SOURCE[0]}")
exec bash "$HERE/../common/run.sh" base2new_train "$HERE" "$@"
