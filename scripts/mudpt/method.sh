# MuDPT with the paper's settings (n = 4, D = 12, batch 4, 10 epochs) for every protocol.
# The released variants: CFG=vit_b16_released_linear_nctx2_depth8 (MuDPT),
# CFG=vit_b16_released_transformer_nctx4_depth12 (UUMuDPT) or
# CFG=vit_b16_released_umudpt_nctx2_depth9 (UMuDPT) in the environment.
TRAINER=MuDPT
CFG_BASE2NEW=vit_b16_bz4_ep10_nctx4_depth12
CFG_FEW_SHOT=vit_b16_bz4_ep10_nctx4_depth12
CFG_CROSS_DATASET=vit_b16_bz4_ep10_nctx4_depth12
