# DPT: CoOp text prompts + deep visual prompts + class-aware visual prompts (ViT-B/16).
TRAINER=DPT
CFG_BASE2NEW=vit_b16_deep
CFG_FEW_SHOT=vit_b16_deep
CFG_CROSS_DATASET=vit_b16_deep
