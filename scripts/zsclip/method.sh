# Zero-shot CLIP: nothing to train, so every protocol runs one --eval-only evaluation.
TRAINER=ZeroshotCLIP
TRAINING_FREE=1
CFG_BASE2NEW=vit_b16
CFG_FEW_SHOT=vit_b16
CFG_CROSS_DATASET=vit_b16
