# TCP with its released setting: 50 epochs, 25 on ImageNet and SUN397 (the released train.py's rule). The
# released code has base-to-new scripts only; its authors run few-shot with the same setting on all classes
# (Textual-based_Class-aware_prompt_tuning issue #7), and cross-dataset trains the ImageNet setting.
TRAINER=TCP

config_for() {  # PROTOCOL DATASET SHOTS -> config name
    local protocol=$1 dataset=$2
    case "$protocol:$dataset" in
        cross_dataset:*) echo vit_b16_imagenet ;;  # trained on ImageNet; its targets load that run
        *:imagenet | *:sun397) echo "vit_b16_$dataset" ;;  # 25 epochs
        *) echo vit_b16 ;;
    esac
}
