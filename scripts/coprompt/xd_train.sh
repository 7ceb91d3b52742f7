#!/usr/bin/env bash
# Cross-dataset / domain generalisation: train on ImageNet, 16 shots. Usage: xd_train.sh SEED [KEY VALUE ...]
# Environment: DATA, CLIP_PATH, OUTPUT, PYTHON, GPU, DRY_RUN (see scripts/README.md).
HERE=$(dirname "${BASH_SOURCE[0]}")
exec bash "$HERE/../common/run.sh" xd_train "$HERE" "$@"
