#!/usr/bin/env bash
# The one body behind every scripts/<method>/<protocol>.sh.
#
#   run.sh PROTOCOL METHOD_DIR ARG...      (called by the per-method wrappers)
#
# PROTOCOL is base2new_train, base2new_test, few_shot, xd_train or xd_test. METHOD_DIR holds
# method.sh, which names TRAINER and the config per protocol. Environment:
#   DATA       dataset root (default: <repo>/data)
#   CLIP_PATH  local CLIP weights file; empty: MODEL.BACKBONE.NAME via ~/.cache/clip
#   OUTPUT     output root (default: <repo>/output)
#   PYTHON     interpreter (default: <repo>/.venv/bin/python if present, else python3)
#   GPU        if set, exported as CUDA_VISIBLE_DEVICES for this job
#   NPROC      processes (GPUs) of one run, default 1; > 1 runs train.py through
#              torchrun --standalone --nproc_per_node NPROC (alias: GPUS_PER_RUN)
#   CFG        config name under configs/trainers/<TRAINER>/ (default: chosen by method.sh),
#              e.g. CFG=vit_b16_released_linear for MuDPT's released variant
#   LOAD_EPOCH override the epoch a test loads (default: OPTIM.MAX_EPOCH of the config)
#   TAG        own data (DATASET image_folder, DATA = its folder): its name in output folders
#              and tables, passed as DATASET.TAG (default: the name of the DATA folder)
#   DRY_RUN=1  print the output folder, status and command; run nothing, change nothing
set -euo pipefail

die() {
    echo "Error: $*" >&2
    exit 2
}

absolute() {  # a path as seen from the caller's folder, made absolute
    case "$1" in
        /*) printf '%s\n' "$1" ;;
        *) printf '%s\n' "$PWD/$1" ;;
    esac
}

is_uint() {
    [[ "$1" =~ ^[0-9]+$ ]]
}

[ $# -ge 2 ] || die "run.sh is called by the scripts in scripts/<method>/, e.g. bash scripts/mudpt/base2new_train.sh dtd 1"
PROTOCOL=$1
METHOD_DIR=$(cd "$2" && pwd)
shift 2
METHOD=$(basename "$METHOD_DIR")
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
SCRIPT="scripts/${METHOD}/${PROTOCOL}.sh"

case "$PROTOCOL" in
    base2new_train | base2new_test) USAGE="bash $SCRIPT DATASET SEED [KEY VALUE ...]" ;;
    few_shot) USAGE="bash $SCRIPT DATASET SEED [SHOTS] [KEY VALUE ...]" ;;
    xd_train) USAGE="bash $SCRIPT SEED [KEY VALUE ...]" ;;
    xd_test) USAGE="bash $SCRIPT DATASET SEED [KEY VALUE ...]" ;;
    *) die "unknown protocol '$PROTOCOL' (expected base2new_train, base2new_test, few_shot, xd_train or xd_test)" ;;
esac

# ---- positional arguments -------------------------------------------------------------
SHOTS=16
if [ "$PROTOCOL" = xd_train ]; then
    [ $# -ge 1 ] || die "missing SEED. Usage: $USAGE"
    DATASET=imagenet
    SEED=$1
    shift
else
    [ $# -ge 2 ] || die "missing arguments. Usage: $USAGE"
    DATASET=$1
    SEED=$2
    shift 2
    if [ "$PROTOCOL" = few_shot ] && [ $# -ge 1 ] && is_uint "$1"; then
        SHOTS=$1
        shift
    fi
fi
is_uint "$SEED" || die "SEED must be a whole number >= 0, got '$SEED'. Usage: $USAGE"
is_uint "$SHOTS" && [ "$SHOTS" -gt 0 ] || die "SHOTS must be a whole number > 0, got '$SHOTS'. Usage: $USAGE"
EXTRA_OPTS=("$@")
[ $(( ${#EXTRA_OPTS[@]} % 2 )) -eq 0 ] ||
    die "extra options must come in KEY VALUE pairs (e.g. DATALOADER.NUM_WORKERS 0), got: ${EXTRA_OPTS[*]}"

# ---- environment, resolved before leaving the caller's folder ---------------------------
DATA=$(absolute "${DATA:-$REPO/data}")
OUTPUT=$(absolute "${OUTPUT:-$REPO/output}")
CLIP_PATH=${CLIP_PATH:-}
[ -z "$CLIP_PATH" ] || CLIP_PATH=$(absolute "$CLIP_PATH")
if [ -n "${PYTHON:-}" ]; then
    PY=$PYTHON
elif [ -x "$REPO/.venv/bin/python" ]; then
    PY=$REPO/.venv/bin/python
else
    PY=python3
fi
if [ -n "${NPROC:-}" ] && [ -n "${GPUS_PER_RUN:-}" ] && [ "$NPROC" != "$GPUS_PER_RUN" ]; then
    die "NPROC=$NPROC and GPUS_PER_RUN=$GPUS_PER_RUN disagree; set only one of them."
fi
NPROC=${NPROC:-${GPUS_PER_RUN:-1}}
is_uint "$NPROC" && [ "$NPROC" -gt 0 ] ||
    die "NPROC (or GPUS_PER_RUN) must be a whole number > 0 (processes of one run), got '$NPROC'."
NPROC=$((10#$NPROC))
cd "$REPO"

# ---- method: TRAINER and config ----------------------------------------------------------
[ -f "$METHOD_DIR/method.sh" ] || die "$METHOD_DIR/method.sh is missing; it must set TRAINER and the CFG_* names."
TRAINING_FREE=0
TRAINER=""
CFG_FROM_ENV=${CFG:-}
# shellcheck source=/dev/null
source "$METHOD_DIR/method.sh"
[ -n "$TRAINER" ] || die "$METHOD_DIR/method.sh does not set TRAINER."

case "$PROTOCOL" in
    base2new_*) PROTOCOL_GROUP=base2new ;;
    xd_*) PROTOCOL_GROUP=cross_dataset ;;
    *) PROTOCOL_GROUP=few_shot ;;
esac
CFG=""
if [ -n "$CFG_FROM_ENV" ]; then
    CFG=$CFG_FROM_ENV
elif declare -F config_for >/dev/null; then
    # A method may pick its config per dataset/shots (e.g. CoOp's shorter ImageNet schedule).
    CFG=$(config_for "$PROTOCOL_GROUP" "$DATASET" "$SHOTS")
else
    case "$PROTOCOL_GROUP" in
        base2new) CFG=${CFG_BASE2NEW:-} ;;
        cross_dataset) CFG=${CFG_CROSS_DATASET:-} ;;
        few_shot) CFG=${CFG_FEW_SHOT:-} ;;
    esac
fi
[ -n "$CFG" ] || die "$METHOD_DIR/method.sh names no config for the $PROTOCOL_GROUP protocol."
CFG_FILE="configs/trainers/${TRAINER}/${CFG}.yaml"
DATASET_FILE="configs/datasets/${DATASET}.yaml"
if [ ! -f "$CFG_FILE" ]; then
    configs=$(cd "configs/trainers/${TRAINER}" 2>/dev/null && ls -- *.yaml 2>/dev/null | sed 's/\.yaml$//' | tr '\n' ' ' || true)
    configs=${configs% }
    [ -z "$CFG_FROM_ENV" ] ||
        die "CFG=$CFG_FROM_ENV names no config of $TRAINER: $CFG_FILE does not exist. Configs of $TRAINER: ${configs:-none}. Set CFG to one of them, or unset CFG for the default of this protocol."
    die "config file $CFG_FILE not found (named by $METHOD_DIR/method.sh). Configs of $TRAINER: ${configs:-none}"
fi
if [ ! -f "$DATASET_FILE" ]; then
    known=$(cd configs/datasets 2>/dev/null && ls -- *.yaml 2>/dev/null | sed 's/\.yaml$//' | tr '\n' ' ')
    die "unknown dataset '$DATASET': $DATASET_FILE does not exist. Known datasets: ${known:-none}"
fi

# ---- DePT (TRAINER.DEPT.ENABLED True among the options): another method, folders of its own -----
CFG_IN_PATHS=$CFG
DEPT=False
for ((i = 0; i < ${#EXTRA_OPTS[@]}; i += 2)); do
    [ "${EXTRA_OPTS[i]}" != TRAINER.DEPT.ENABLED ] || DEPT=${EXTRA_OPTS[i + 1]}
done
[ "$DEPT" != True ] || [[ "$CFG" == *_dept ]] || CFG_IN_PATHS="${CFG}_dept"

# ---- the dataset's name in output folders ----------------------------------------------
NAME_IN_PATHS=$DATASET
TAG_OPTS=()
IDENTITY=()  # recorded facts of a finished run that must match before it is skipped
if [ "$DATASET" = image_folder ]; then
    # Own datasets are told apart by their tag, or two of them would share output folders.
    TAG=${TAG:-$(basename "$DATA")}
    [[ "$TAG" =~ ^[A-Za-z0-9][A-Za-z0-9._-]*$ ]] ||
        die "TAG='$TAG' cannot name output folders; set TAG=NAME (letters, digits, '.', '_', '-') for the data in $DATA."
    [ ! -f "configs/datasets/${TAG}.yaml" ] && [ "$TAG" != base2new ] && [ "$TAG" != evaluation ] ||
        die "TAG='$TAG' (own data in $DATA) is also the name of a benchmark dataset or output folder; set TAG=another name."
    NAME_IN_PATHS=$TAG
    TAG_OPTS=(DATASET.TAG "$TAG")
    # Own data is the data in its folder: another folder of the same name is another run.
    IDENTITY=("data_root=$DATA")
fi

max_epoch_of() {  # OPTIM.MAX_EPOCH of a yacs config file
    awk '
        /^[^[:space:]#]/ { in_optim = ($1 == "OPTIM:") }
        in_optim && $1 == "MAX_EPOCH:" { gsub(/["'\'']/, "", $2); print $2; exit }
    ' "$1"
}

# ---- output folders (ENGINE.md 13.1 layout) --------------------------------------------
MODEL_DIR=""
case "$PROTOCOL" in
    base2new_train)
        DIR="$OUTPUT/base2new/train_base/${NAME_IN_PATHS}/shots_${SHOTS}/${TRAINER}/${CFG_IN_PATHS}/seed${SEED}"
        PROTOCOL_OPTS=(DATASET.NUM_SHOTS "$SHOTS" DATASET.SUBSAMPLE_CLASSES base) ;;
    base2new_test)
        DIR="$OUTPUT/base2new/test_new/${NAME_IN_PATHS}/shots_${SHOTS}/${TRAINER}/${CFG_IN_PATHS}/seed${SEED}"
        MODEL_DIR="$OUTPUT/base2new/train_base/${NAME_IN_PATHS}/shots_${SHOTS}/${TRAINER}/${CFG_IN_PATHS}/seed${SEED}"
        PROTOCOL_OPTS=(DATASET.NUM_SHOTS "$SHOTS" DATASET.SUBSAMPLE_CLASSES new) ;;
    few_shot)
        DIR="$OUTPUT/${NAME_IN_PATHS}/${TRAINER}/${CFG_IN_PATHS}_${SHOTS}shots/seed${SEED}"
        PROTOCOL_OPTS=(DATASET.NUM_SHOTS "$SHOTS") ;;
    xd_train)
        DIR="$OUTPUT/imagenet/${TRAINER}/${CFG_IN_PATHS}_${SHOTS}shots/seed${SEED}"
        PROTOCOL_OPTS=(DATASET.NUM_SHOTS "$SHOTS") ;;
    xd_test)
        DIR="$OUTPUT/evaluation/${TRAINER}/${CFG_IN_PATHS}_${SHOTS}shots/${NAME_IN_PATHS}/seed${SEED}"
        MODEL_DIR="$OUTPUT/imagenet/${TRAINER}/${CFG_IN_PATHS}_${SHOTS}shots/seed${SEED}"
        PROTOCOL_OPTS=() ;;
esac

LAUNCH=("$PY")
# Several processes: the venv's own torchrun, one process per GPU, same train.py arguments.
[ "$NPROC" = 1 ] || LAUNCH=("$PY" -m torch.distributed.run --standalone --nproc_per_node "$NPROC")
CMD=("${LAUNCH[@]}" train.py
    --root "$DATA"
    --seed "$SEED"
    --trainer "$TRAINER"
    --dataset-config-file "$DATASET_FILE"
    --config-file "$CFG_FILE"
    --output-dir "$DIR")
if [ "$TRAINING_FREE" = 1 ]; then
    # Zero-shot methods have nothing to train: every protocol is one evaluation.
    CMD+=(--eval-only)
elif [ -n "$MODEL_DIR" ]; then
    LOAD=${LOAD_EPOCH:-$(max_epoch_of "$CFG_FILE")}
    # An OPTIM.MAX_EPOCH given on the command line (last one wins, as in yacs) trained the model.
    if [ -z "${LOAD_EPOCH:-}" ]; then
        for ((i = 0; i < ${#EXTRA_OPTS[@]}; i += 2)); do
            [ "${EXTRA_OPTS[i]}" != OPTIM.MAX_EPOCH ] || LOAD=${EXTRA_OPTS[i + 1]}
        done
    fi
    is_uint "$LOAD" && [ "$LOAD" -gt 0 ] ||
        die "could not read OPTIM.MAX_EPOCH from $CFG_FILE (got '$LOAD'); set LOAD_EPOCH=N to choose the checkpoint."
    CMD+=(--model-dir "$MODEL_DIR" --load-epoch "$LOAD" --eval-only)
fi
[ -z "$CLIP_PATH" ] || CMD+=(MODEL.BACKBONE.PATH "$CLIP_PATH")
CMD+=("${PROTOCOL_OPTS[@]}" "${TAG_OPTS[@]}" "${EXTRA_OPTS[@]}")

if [ -f "$DIR/results.json" ]; then
    STATUS=done
    # A finished run is skipped only if it is this run (another seed, shots or tag is refused).
    python3 "$REPO/scripts/common/same_run.py" "$DIR/results.json" "trainer=$TRAINER" "seed=$SEED" \
        "config=$CFG" "${IDENTITY[@]}" -- "${PROTOCOL_OPTS[@]}" "${TAG_OPTS[@]}" "${EXTRA_OPTS[@]}" || exit 2
elif [ -e "$DIR/log.txt" ]; then
    STATUS=partial
else
    STATUS=todo
fi

if [ "${DRY_RUN:-0}" = 1 ]; then
    echo "output_dir: $DIR"
    [ -z "$MODEL_DIR" ] || echo "model_dir: $MODEL_DIR"
    echo "status: $STATUS"
    echo "command: $(printf '%q ' "${CMD[@]}")"
    exit 0
fi

# ---- run ----------------------------------------------------------------------------------
if [ "$STATUS" = done ]; then
    echo "Oops! The results exist at ${DIR} (so skip this job)"
    exit 0
fi
if [ -f "$DIR/run.lock" ]; then  # a live run holds the folder: leave its log where it is
    HOLDER=$(sed -n 's/.*"pid": *\([0-9]*\).*/\1/p' "$DIR/run.lock")
    [ -z "$HOLDER" ] || ! kill -0 "$HOLDER" 2>/dev/null ||
        die "$DIR is in use by a running process (PID $HOLDER, see $DIR/run.lock); wait for it to finish."
fi
[ -d "$DATA" ] || die "dataset root DATA=$DATA does not exist. Set DATA=/path/to/datasets (the folder that holds oxford_pets/, dtd/, ...)."
[ -z "$CLIP_PATH" ] || [ -f "$CLIP_PATH" ] || die "CLIP_PATH=$CLIP_PATH is not a file. Point it to CLIP weights (e.g. ViT-B-16.pt), or unset it to use ~/.cache/clip."
if [ -n "$MODEL_DIR" ] && [ "$TRAINING_FREE" != 1 ]; then
    TRAIN_SCRIPT=$([ "$PROTOCOL" = base2new_test ] && echo "base2new_train.sh $DATASET $SEED" || echo "xd_train.sh $SEED")
    [ -d "$MODEL_DIR" ] || die "no trained model at $MODEL_DIR. Train it first: bash scripts/${METHOD}/${TRAIN_SCRIPT}"
    [ -f "$MODEL_DIR/results.json" ] ||
        echo "Warning: the training run at $MODEL_DIR has no results.json (unfinished?); trying its checkpoint anyway." >&2
fi
if [ "$STATUS" = partial ]; then
    # An unfinished run (crashed or killed): keep its log for inspection, start a fresh log.txt.
    STALE="$DIR/log.txt.incomplete-$(date +%Y%m%d-%H%M%S)"
    mv "$DIR/log.txt" "$STALE"
    echo "Found an unfinished run at $DIR (no results.json); its log was moved to $STALE. Running it again."
fi
[ -z "${GPU:-}" ] || export CUDA_VISIBLE_DEVICES=$GPU

# One line when the job starts and one when it ends, so a grid of jobs shows its progress.
JOB="$METHOD $PROTOCOL $NAME_IN_PATHS seed $SEED"
[ "$PROTOCOL" != few_shot ] || JOB="$JOB, $SHOTS shots"
elapsed() {
    local s=$((SECONDS - START))
    printf '%d:%02d:%02d' $((s / 3600)) $((s % 3600 / 60)) $((s % 60))
}
START=$SECONDS
echo "== start: $JOB ($(date '+%Y-%m-%d %H:%M:%S'))"
echo "Running: $(printf '%q ' "${CMD[@]}")"
RC=0
"${CMD[@]}" || RC=$?
if [ "$RC" = 0 ] && [ ! -f "$DIR/results.json" ]; then
    echo "Warning: train.py exited without writing $DIR/results.json; the run is not complete." >&2
    RC=1
fi
if [ "$RC" != 0 ]; then
    LOG="log: $DIR/log.txt"
    [ -f "$DIR/log.txt" ] || LOG="no log.txt: it stopped before logging, see the messages above"
    echo "== FAILED: $JOB after $(elapsed) (exit status $RC); $LOG" >&2
    exit "$RC"
fi
# The first "accuracy" of results.json is the final test's (train.py nests it under "metrics").
ACCURACY=$(sed -n '/"accuracy": *[-0-9]/{s/.*"accuracy": *\([-0-9.eE+]*\).*/\1/p;q;}' "$DIR/results.json")
if [ -n "$ACCURACY" ]; then
    ACCURACY=$(printf '%.2f%%' "$ACCURACY")
else
    ACCURACY="unknown (see $DIR/results.json)"
fi
echo "== done: $JOB in $(elapsed), accuracy $ACCURACY"
