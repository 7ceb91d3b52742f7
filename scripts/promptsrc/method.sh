# PromptSRC with its released configs: base-to-new, cross-dataset (prompts in layers 1-3), and few-shot with
# the GPA setting the released config gives each dataset.
TRAINER=PromptSRC
CFG_BASE2NEW="vit_b16_c2_ep20_batch4_4+4ctx"
CFG_CROSS_DATASET="vit_b16_c2_ep20_batch4_4+4ctx_cross_datasets"
CFG_FEW_SHOT="vit_b16_c2_ep50_batch4_4+4ctx_few_shot"

config_for() {  # PROTOCOL DATASET SHOTS -> config name
    local protocol=$1 dataset=$2
    case "$protocol" in
        base2new) echo "$CFG_BASE2NEW" ;;
        cross_dataset) echo "$CFG_CROSS_DATASET" ;;
        few_shot)
            case "$dataset" in
                stanford_cars | oxford_flowers | fgvc_aircraft | dtd | eurosat) echo "${CFG_FEW_SHOT}_gpa45" ;;
                *) echo "$CFG_FEW_SHOT" ;;
            esac ;;
    esac
}
