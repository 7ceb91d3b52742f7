#!/usr/bin/env bash
# Few-shot: train and test on all classes. Usage: few_shot.sh DATASET SEED [SHOTS (default 16)] [KEY VALUE ...]
# Environment: DATA, CLIP_PATH, OUTPUT, PYTHON, GPU, DRY_RUN (see scripts/README.md).
HERE=$(dirname "${BASH_SOURCE[0]}")
exec bash "$HERE/../common/run.sh" few_shot "$HERE" "$@"
