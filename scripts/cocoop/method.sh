# CoCoOp: the same 10-epoch, batch-1 config for every protocol.
TRAINER=CoCoOp
CFG_BASE2NEW=vit_b16_c4_ep10_batch1_ctxv1
CFG_FEW_SHOT=vit_b16_c4_ep10_batch1_ctxv1
CFG_CROSS_DATASET=vit_b16_c4_ep10_batch1_ctxv1
