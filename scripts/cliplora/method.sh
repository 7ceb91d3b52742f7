# CLIP-LoRA with its released hyperparameters (rank 2, q/k/v in every block of both encoders, AdamW,
# 500 iterations per shot) for every protocol: it fixes them for all datasets and shot counts.
TRAINER=CLIPLoRA
CFG_BASE2NEW=vit_b16_r2
CFG_FEW_SHOT=vit_b16_r2
CFG_CROSS_DATASET=vit_b16_r2
