# MMA with its released configs: batch 16 (batch 128 on ImageNet), 5 epochs. The released code has no
# few-shot protocol; name a config with CFG=... to run one.
TRAINER=MMA
CFG_BASE2NEW=vit_b16_ep5
CFG_CROSS_DATASET=vit_b16_ep5_imnet  # trained on ImageNet

config_for() {  # PROTOCOL DATASET SHOTS -> config name
    local protocol=$1 dataset=$2
    case "$protocol" in
        base2new)
            if [ "$dataset" = imagenet ]; then echo vit_b16_ep5_imnet; else echo "$CFG_BASE2NEW"; fi ;;
        cross_dataset) echo "$CFG_CROSS_DATASET" ;;
    esac
}
