#!/usr/bin/env bash
# Cross-dataset / domain generalisation: evaluate the ImageNet model on DATASET. Usage: xd_test.sh DATASET SEED [KEY VALUE ...]
# Environment: DATA, CLIP_PATH, OUTPUT, PYTHON, GPU, DRY_RUN (see scripts/README.md).
HERE=$(dirname "${BASH_SOURCE[0]}")
exec bash "$HERE/../common/run.sh" xd_test "$HERE" "$@"
