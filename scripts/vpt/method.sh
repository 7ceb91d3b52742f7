# Deep visual prompt tuning (VPT-deep, 8 tokens, depth 12) with a fixed text template.
TRAINER=VPT
CFG_BASE2NEW=vit_b16_c2_ep5_batch4_4
CFG_FEW_SHOT=vit_b16_c2_ep5_batch4_4
CFG_CROSS_DATASET=vit_b16_c2_ep5_batch4_4
