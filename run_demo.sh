#!/usr/bin/env bash
# The main job on an embedded default: set up .venv/, then run base-to-new (train on the base
# classes, test on the new ones) on the synthetic benchmark with the pretrained mini-CLIP
# (assets/mini_clip.pt) for zero-shot CLIP, CoOp, CoCoOp and MuDPT through the real scripts, and
# print Table III. The benchmark is generated into $DEMO/data on first use.
# Environment: DEMO (work folder, default ./demo), SEEDS (default "1"),
#              METHODS (default "zsclip coop cocoop mudpt"; any folder of scripts/), FULL=1 (the configs'
#              own schedules).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
bash tools/setup_env.sh
PY=.venv/bin/python
DEMO=${DEMO:-demo}
SEEDS=${SEEDS:-1}
METHODS=${METHODS:-zsclip coop cocoop mudpt}
mkdir -p "$DEMO/logs" "$DEMO/data"
export DATA="$DEMO/data" CLIP_PATH=assets/mini_clip.pt OUTPUT="$DEMO/output" PYTHON="$PY"

demo_schedule() {  # METHOD -> the demo's settings (KEY VALUE ...); none with FULL=1
    [ "${FULL:-0}" != 1 ] || return 0
    # Shorter schedules only: the configs' own transforms (random crops, flips) are kept.
    case "$1" in
        coop) echo "OPTIM.MAX_EPOCH 20 OPTIM.LR 0.005" ;;   # config: 200 epochs at LR 0.002
        cocoop) echo "OPTIM.MAX_EPOCH 2 OPTIM.LR 0.005" ;; # config: 10 epochs at LR 0.002
        mudpt) echo "OPTIM.MAX_EPOCH 3" ;;                 # config: 10 epochs
        mmrl) echo "OPTIM.MAX_EPOCH 2 OPTIM.LR 0.005" ;;   # config: 10 epochs at LR 0.001
        hicropl) echo "OPTIM.MAX_EPOCH 2 OPTIM.LR 0.01 TRAINER.HICROPL.N_CTX 4" ;;  # 50 epochs, 16 tokens
    esac
}

run() {  # LOG COMMAND...: run one job, its full output in LOG, its progress here; on failure the end of LOG
    local log="$DEMO/logs/$1.log"
    shift
    if ! "$@" 2>&1 | tee "$log" | bash scripts/common/show_progress.sh; then
        echo "FAILED: $* (last lines of $log follow)" >&2
        tail -n 30 "$log" >&2
        exit 1
    fi
}

for method in $METHODS; do
    read -r -a schedule <<<"$(demo_schedule "$method")"
    for seed in $SEEDS; do
        run "${method}_train_seed$seed" bash "scripts/$method/base2new_train.sh" synthetic_shapes "$seed" \
            DATALOADER.NUM_WORKERS 0 "${schedule[@]}"
        run "${method}_test_seed$seed" bash "scripts/$method/base2new_test.sh" synthetic_shapes "$seed" \
            DATALOADER.NUM_WORKERS 0 "${schedule[@]}"
    done
done
echo
$PY parse_test_res.py --tables "$OUTPUT" --table base2new
echo
[ "${FULL:-0}" = 1 ] || echo "Demo settings (FULL=1 runs the configs' own): 16 shots, shorter schedules;
CoOp 20 epochs at LR 0.005 (config: 200 at 0.002), CoCoOp 2 epochs at LR 0.005 (10 at 0.002),
MuDPT 3 of 10 epochs (METHODS with mmrl: 2 epochs at LR 0.005, config 10 at 0.001; hicropl: 2 epochs
at LR 0.01 with 4 prompt tokens, config 50 at 0.0025 with 16); the first epoch is warm-up."
echo "Runs and logs are under $OUTPUT/base2new/."
