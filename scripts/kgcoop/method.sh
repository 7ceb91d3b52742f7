# KgCoOp with its released setting (context from "a photo of a", W 8, batch 128, 100 epochs) for every protocol.
TRAINER=KgCoOp
CFG_BASE2NEW=vit_b16_ep100_ctxv1
CFG_FEW_SHOT=vit_b16_ep100_ctxv1
CFG_CROSS_DATASET=vit_b16_ep100_ctxv1
