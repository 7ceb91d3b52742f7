# LwEIB with its released configs: base-to-new (every dataset, ImageNet included) and cross-dataset
# (trained on ImageNet). Each run reads class descriptions: pass DATASET.DESCRIPTIONS FILE (a CuPL-form
# JSON file of the dataset's classes) after the positional arguments. The released code has no
# few-shot protocol; name a config with CFG=... to run one.
TRAINER=LwEIB
CFG_BASE2NEW=vit_b16_ep25_batch16
CFG_CROSS_DATASET=vit_b16_ep10_batch128_cross_datasets
