"""Train or evaluate a CLIP prompt-tuning method (CoOp-compatible command line).

python train.py --root DATA --seed 1 --trainer MuDPT \
    --dataset-config-file configs/datasets/caltech101.yaml \
    --config-file configs/trainers/MuDPT/vit_b16_bz4_ep10_nctx4_depth12.yaml \
    --output-dir output/run [--eval-only --model-dir DIR --load-epoch N] [KEY VALUE ...]
"""
import argparse
import os
import sys

import dassl  # noqa: F401  (first: makes torchvision importable on CPU-only torch)
import torch

import datasets  # noqa: F401  (registers every dataset)
import trainers
from dassl.engine import build_trainer
from dassl.utils import collect_env_info, set_deterministic, set_random_seed, setup_logger


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", "--dataset_root", dest="root", default="", help="folder holding the datasets")
    p.add_argument("--output-dir", "--output_dir", dest="output_dir", default="", help="output directory")
    p.add_argument("--resume", default="", help="checkpoint directory to resume from (default: output dir)")
    p.add_argument("--seed", type=int, default=None, help="random seed; any integer >= 0, including 0")
    p.add_argument("--deterministic", action="store_true", help="deterministic algorithms, no cudnn autotune")
    p.add_argument("--source-domains", type=str, nargs="+", help="source domains (DA/DG)")
    p.add_argument("--target-domains", type=str, nargs="+", help="target domains (DA/DG)")
    p.add_argument("--transforms", type=str, nargs="+", help="data augmentation methods")
    p.add_argument("--config-file", "--trainer_config", dest="config_file", default="", help="trainer YAML")
    p.add_argument("--dataset-config-file", "--dataset_config", dest="dataset_config_file", default="",
                   help="dataset YAML")
    p.add_argument("--trainer", default="", help="name of the trainer")
    p.add_argument("--backbone", default="", help="CLIP backbone name")
    p.add_argument("--head", default="", help="name of the head")
    p.add_argument("--eval-only", "--eval_only", dest="eval_only", action="store_true", help="evaluation only")
    p.add_argument("--model-dir", "--model_dir", dest="model_dir", default="", help="load the model from here")
    p.add_argument("--load-epoch", "--load_epoch", dest="load_epoch", type=int,
                   help="load model.pth.tar-N (default: model-best.pth.tar)")
    p.add_argument("--no-train", "--no_train", dest="no_train", action="store_true", help="do not call trainer.train()")
    p.add_argument("opts", default=None, nargs=argparse.REMAINDER, help="config options as KEY VALUE pairs")
    return p.parse_args(argv)


def reset_cfg(cfg, args):
    if args.root:
        cfg.DATASET.ROOT = args.root
    if args.output_dir:
        cfg.OUTPUT_DIR = args.output_dir
    if args.resume:
        cfg.RESUME = args.resume
    if args.seed is not None:
        if args.seed < 0:
            raise ValueError(f"--seed {args.seed}: a seed must be an integer >= 0 (leave it out for no seeding)")
        cfg.SEED = args.seed
    if args.source_domains:
        cfg.DATASET.SOURCE_DOMAINS = args.source_domains
    if args.target_domains:
        cfg.DATASET.TARGET_DOMAINS = args.target_domains
    if args.transforms:
        cfg.INPUT.TRANSFORMS = args.transforms
    if args.trainer:
        cfg.TRAINER.NAME = args.trainer
    if args.backbone:
        cfg.MODEL.BACKBONE.NAME = args.backbone
    if args.head:
        cfg.MODEL.HEAD.NAME = args.head


def check_file(path, flag):
    if path and not os.path.isfile(path):
        raise FileNotFoundError(f'{flag} "{path}" does not exist. Config files live under configs/datasets/ '
                                "and configs/trainers/<Trainer>/.")


def setup_cfg(args):
    cfg = trainers.build_cfg()
    check_file(args.dataset_config_file, "--dataset-config-file")
    check_file(args.config_file, "--config-file")
    if args.dataset_config_file:
        cfg.merge_from_file(args.dataset_config_file)
    if args.config_file:
        cfg.merge_from_file(args.config_file)
    reset_cfg(cfg, args)
    cfg.merge_from_list(args.opts or [])
    cfg.freeze()
    return cfg


def print_args(args, cfg):
    print("***************")
    print("** Arguments **")
    print("***************")
    for key in sorted(vars(args)):
        print(f"{key}: {getattr(args, key)}")
    print("************")
    print("** Config **")
    print("************")
    print(cfg)


def prepare(args):
    """Everything that depends only on the user's input: config, logger, trainer, weights."""
    cfg = setup_cfg(args)
    setup_logger(cfg.OUTPUT_DIR)  # before seeding, so the seed line is in log.txt
    if cfg.SEED >= 0:
        print(f"Setting fixed seed: {cfg.SEED}")
        set_random_seed(cfg.SEED)
    if args.deterministic:
        set_deterministic()
    elif torch.cuda.is_available() and cfg.USE_CUDA:
        torch.backends.cudnn.benchmark = True
    print_args(args, cfg)
    print("Collecting env info ...")
    print(f"** System info **\n{collect_env_info()}\n")
    trainer = build_trainer(cfg)
    if args.eval_only:
        trainer.load_model(args.model_dir, epoch=args.load_epoch)
    return trainer


def run(trainer, args):
    if args.eval_only:
        trainer.test()
        trainer.write_final_results()
    elif not args.no_train:
        trainer.train()


# Bad input (unknown key, trainer or dataset, missing file) surfaces as one of these while
# preparing; show the message alone. Errors during training keep their traceback.
USER_ERRORS = (KeyError, ValueError, FileNotFoundError, TypeError, AssertionError)


def main(argv=None):
    args = parse_args(argv)
    try:
        trainer = prepare(args)
    except USER_ERRORS as exc:
        if os.environ.get("TRAIN_DEBUG"):
            raise
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"train.py: error: {message}", file=sys.stderr)
        print("(set TRAIN_DEBUG=1 for the full traceback)", file=sys.stderr)
        sys.exit(2)
    run(trainer, args)


if __name__ == "__main__":
    main()
