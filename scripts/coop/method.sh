# CoOp, with the schedules of its own scripts: shorter runs for ImageNet and for few shots.
TRAINER=CoOp

config_for() {  # PROTOCOL DATASET SHOTS -> config name
    local protocol=$1 dataset=$2 shots=$3
    case "$protocol" in
        base2new)
            if [ "$dataset" = imagenet ]; then echo vit_b16_ep50_ctxv1; else echo vit_b16_ctxv1; fi ;;
        cross_dataset) echo vit_b16_ep50 ;;
        few_shot)
            if [ "$dataset" = imagenet ] || [ "$shots" -le 2 ]; then echo vit_b16_ep50
            elif [ "$shots" -le 8 ]; then echo vit_b16_ep100
            else echo vit_b16; fi ;;
    esac
}
