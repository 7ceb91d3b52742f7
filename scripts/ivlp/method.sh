# Independent deep vision-language prompts (2 + 2 tokens, depth 12), no coupling.
TRAINER=IVLP
CFG_BASE2NEW=vit_b16_c2_ep5_batch4_2+2ctx
CFG_FEW_SHOT=vit_b16_c2_ep5_batch4_2+2ctx
CFG_CROSS_DATASET=vit_b16_c2_ep5_batch4_2+2ctx
