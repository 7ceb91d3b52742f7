# MaPLe: n = 2, prompt depth 9; cross-dataset uses its own shorter config (depth 3, 2 epochs).
TRAINER=MaPLe
CFG_BASE2NEW=vit_b16_c2_ep5_batch4_2ctx
CFG_FEW_SHOT=vit_b16_c2_ep5_batch4_2ctx
CFG_CROSS_DATASET=vit_b16_c2_ep5_batch4_2ctx_cross_datasets
