# DCP (Cross-Modal Prompt Attention) as described in the paper; the released behaviour:
# CFG=vit_b16_c2_ep20_batch4_16ctx_released in the environment.
TRAINER=DCP
CFG_BASE2NEW=vit_b16_c2_ep20_batch4_16ctx
CFG_FEW_SHOT=vit_b16_c2_ep20_batch4_16ctx
CFG_CROSS_DATASET=vit_b16_c2_ep20_batch4_16ctx
