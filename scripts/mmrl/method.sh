# MMRL with its released configs: base-to-new (batch 4, 10 epochs; ImageNet batch 32, 5 epochs), few-shot
# (batch 32, 50 epochs; ImageNet as in base-to-new) and cross-dataset (1 epoch on ImageNet), with the released
# per-dataset values (TRAINER.MMRL.DATASET_TABLE). MMRL_VARIANT=mmrlpp runs MMRL++ with its own configs
# (the same trainer with TRAINER.MMRL.VARIANT mmrlpp; its output folders carry "mmrlpp" in the config name).
TRAINER=MMRL
case "${MMRL_VARIANT:-mmrl}" in
    mmrl) VARIANT_CFG="" ;;
    mmrlpp) VARIANT_CFG="_mmrlpp" ;;
    *) echo "Error: MMRL_VARIANT is '${MMRL_VARIANT}'; use mmrl (the default) or mmrlpp (MMRL++)." >&2
       exit 2 ;;
esac

config_for() {  # PROTOCOL DATASET SHOTS -> config name
    local protocol=$1 dataset=$2
    case "$protocol" in
        base2new)
            if [ "$dataset" = imagenet ]; then echo "vit_b16${VARIANT_CFG}_imagenet"; else echo "vit_b16${VARIANT_CFG}"; fi ;;
        few_shot)
            if [ "$dataset" = imagenet ]; then echo "vit_b16${VARIANT_CFG}_imagenet"; else echo "vit_b16${VARIANT_CFG}_few_shot"; fi ;;
        cross_dataset) echo "vit_b16${VARIANT_CFG}_cross_datasets" ;;
    esac
}
