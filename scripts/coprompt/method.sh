# CoPrompt with its released settings: base-to-new only (the released code has no few-shot or cross-dataset
# protocol; name a config with CFG=... to run one). The released code sets the context length, prompt depth,
# consistency weight (and Food101's epochs) per dataset: each dataset has its config; others get the released
# default config.
TRAINER=CoPrompt
CFG_BASE2NEW=vit_b16_batch4

config_for() {  # PROTOCOL DATASET SHOTS -> config name
    local protocol=$1 dataset=$2
    case "$protocol" in
        base2new)
            case "$dataset" in
                food101 | imagenet | caltech101 | oxford_pets | stanford_cars | oxford_flowers | fgvc_aircraft | sun397 | dtd | \
                    eurosat | ucf101) echo "${CFG_BASE2NEW}_${dataset}" ;;
                *) echo "$CFG_BASE2NEW" ;;
            esac ;;
    esac
}
