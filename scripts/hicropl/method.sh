# HiCroPL with its released configs: 16 tokens in layers 1-12 for base-to-new (batch 128, 40 epochs on
# ImageNet, as the released test script names it; batch 32, 50 epochs elsewhere) and few-shot; 2 tokens in
# layers 1-6 for cross-dataset. Every run needs class descriptions: pass DATASET.DESCRIPTIONS FILE.
TRAINER=HiCroPL
CFG_BASE2NEW=vit_b16_c2_ep50_batch32_16ctx
CFG_CROSS_DATASET=vit_b16_c2_ep5_batch32_2ctx_cross_datasets
CFG_FEW_SHOT=vit_b16_c2_ep50_batch32_16ctx_few_shot

config_for() {  # PROTOCOL DATASET SHOTS -> config name
    local protocol=$1 dataset=$2
    case "$protocol" in
        base2new)
            if [ "$dataset" = imagenet ]; then echo vit_b16_c2_ep40_batch128_16ctx; else echo "$CFG_BASE2NEW"; fi ;;
        cross_dataset) echo "$CFG_CROSS_DATASET" ;;
        few_shot) echo "$CFG_FEW_SHOT" ;;
    esac
}
