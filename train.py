"""Train or evaluate a CLIP prompt-tuning method (CoOp-compatible command line).

python train.py --root DATA --seed 1 --trainer MuDPT \
    --dataset-config-file configs/datasets/caltech101.yaml \
    --config-file configs/trainers/MuDPT/vit_b16_bz4_ep10_nctx4_depth12.yaml \
    --output-dir output/run [--eval-only --model-dir DIR --load-epoch N] [KEY VALUE ...]

torchrun --nproc_per_node N train.py ... runs the same command on N processes (one run).
"""
import argparse
import os
import re
import signal
import sys

ROOT = os.path.dirname(os.path.abspath(__file__))


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
                   help="load model.pth.tar-N (default: model-best.pth.tar, else the newest checkpoint)")
    p.add_argument("--no-train", "--no_train", dest="no_train", action="store_true", help="do not call trainer.train()")
    p.add_argument("opts", default=None, nargs=argparse.REMAINDER, help="config options as KEY VALUE pairs")
    args = p.parse_args(argv)
    flags = {s for action in p._actions for s in action.option_strings}
    misplaced = [o for o in args.opts or [] if o.split("=")[0] in flags]
    if misplaced:
        p.error(f"{misplaced[0]} comes after the KEY VALUE options, where it would be read as a config "
                f"value; move it before them (e.g. train.py {misplaced[0]} ... KEY VALUE).")
    return args


# ------------------------------------------------------------- checks before any heavy import
def _registered_names(package, registry):
    """Class names registered with ``@<registry>.register()`` in the project's package folder,
    read from the source: a misspelt name fails in a fraction of a second, before torch loads."""
    folder = os.path.join(ROOT, package)
    pattern = re.compile(r"@%s\.register\(\)\s*\n\s*class\s+(\w+)" % registry)
    names = set()
    for dirpath, _, files in os.walk(folder):
        for fname in files:
            if fname.endswith(".py"):
                with open(os.path.join(dirpath, fname), encoding="utf-8") as f:
                    names.update(pattern.findall(f.read()))
    return names


def _require_registered(kind, package, name, names, where):
    import difflib
    if not names or name in names:  # an empty scan (unusual layout) defers to the real registry
        return
    close = difflib.get_close_matches(name, sorted(names), n=1, cutoff=0.5)
    hint = f"; do you mean [{close[0]}]?" if close else "."
    raise ValueError(f"Unknown {kind} [{name}] ({where}){hint} Available: {', '.join(sorted(names))}. "
                     f"A {kind} is registered by a module in the project's {package}/ package.")


def quick_checks(args):
    """What can be checked without torch: files exist, trainer and dataset names are known."""
    for path, flag in ((args.dataset_config_file, "--dataset-config-file"), (args.config_file, "--config-file")):
        if path and not os.path.isfile(path):
            raise FileNotFoundError(f'{flag} "{path}" does not exist. Config files live under '
                                    "configs/datasets/ and configs/trainers/<Trainer>/.")
    opts = dict(zip((args.opts or [])[::2], (args.opts or [])[1::2]))
    trainer = opts.get("TRAINER.NAME", args.trainer)
    if trainer:
        where = "TRAINER.NAME" if "TRAINER.NAME" in opts else "--trainer"
        _require_registered("trainer", "trainers", trainer,
                            _registered_names("trainers", "TRAINER_REGISTRY"), where)
    dataset, where = opts.get("DATASET.NAME"), "DATASET.NAME"
    if dataset is None and args.dataset_config_file:
        import yaml
        with open(args.dataset_config_file) as f:
            content = yaml.safe_load(f) or {}
        dataset = (content.get("DATASET") or {}).get("NAME") if isinstance(content, dict) else None
        where = f"DATASET.NAME in {args.dataset_config_file}"
    if dataset:
        _require_registered("dataset", "datasets", dataset,
                            _registered_names("datasets", "DATASET_REGISTRY"), where)


# ------------------------------------------------------------- config and run
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


def setup_cfg(args):
    import trainers
    cfg = trainers.build_cfg()
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
    """Everything that depends only on the user's input: config, output folder, logger, trainer,
    weights. In a torchrun run only rank 0 locks the folder and writes; the others stay silent."""
    import dassl  # noqa: F401  (first: makes torchvision importable on CPU-only torch)
    from dassl.utils.distributed import init_distributed, is_main_process
    from dassl.utils.run_lock import OutputLock

    cfg = setup_cfg(args)
    init_distributed(cfg.USE_CUDA)
    lock = OutputLock(cfg.OUTPUT_DIR).acquire() if is_main_process() else None
    try:
        trainer = build_run(cfg, args)
    except BaseException:
        if lock is not None:
            lock.release()
        raise
    trainer.output_lock = lock
    return trainer


def build_run(cfg, args):
    import torch
    import warnings

    import datasets  # noqa: F401  (registers every dataset)
    from dassl.engine import build_trainer
    from dassl.engine.run_identity import (check_identity, check_model_data, identity_from_output_folder,
                                           run_identity)
    from dassl.utils import (atomic_write_text, collect_env_info, set_deterministic, set_random_seed,
                             setup_logger)
    from dassl.utils.distributed import is_main_process

    folder = f'The output folder "{cfg.OUTPUT_DIR}"'
    # The settings as given: the trainer may yet replace stock preprocessing values with the backbone's.
    settings = run_identity(cfg, args.config_file)["settings"]
    if is_main_process():
        # Before anything is written: the folder must not hold another run.
        check_identity(identity_from_output_folder(cfg.OUTPUT_DIR), run_identity(cfg, args.config_file),
                       folder, "use it for this run")
        setup_logger(cfg.OUTPUT_DIR)  # before seeding, so the seed line is in log.txt
        # The full effective config, machine-readable: predict.py and the tables read it.
        atomic_write_text(os.path.join(cfg.OUTPUT_DIR, "config.yaml"), cfg.dump())
    else:  # other ranks print nothing but errors
        sys.stdout = open(os.devnull, "w")
        warnings.filterwarnings("ignore")
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
    trainer.identity = run_identity(cfg, args.config_file, getattr(getattr(trainer, "dm", None), "dataset", None),
                                    settings=settings)
    check_identity(identity_from_output_folder(cfg.OUTPUT_DIR), trainer.identity, folder, "use it for this run")
    if is_main_process():
        # again: the trainer may have taken the image preprocessing from the backbone
        atomic_write_text(os.path.join(cfg.OUTPUT_DIR, "config.yaml"), cfg.dump())
        write_facts(trainer, cfg.OUTPUT_DIR)
    if args.eval_only:
        if args.model_dir:  # own data: a model of another folder of the same name is not this data's
            check_model_data(identity_from_output_folder(args.model_dir), trainer.identity, args.model_dir)
        trainer.load_model(args.model_dir, epoch=args.load_epoch)
    return trainer


def write_facts(trainer, folder):
    """run_facts.json beside config.yaml: what the run is, as data, for the tables and comparisons.
    A trainer written for the original engine alone (no ``run_facts``) has only its log lines."""
    from results.run_facts import write_run_facts
    if hasattr(trainer, "run_facts"):
        write_run_facts(folder, trainer.run_facts())


def run(trainer, args):
    try:
        if args.eval_only:
            trainer.test()
            trainer.write_final_results()
        elif not args.no_train:
            trainer.train()
    finally:
        release_lock(trainer)


def release_lock(trainer):
    lock = getattr(trainer, "output_lock", None)
    if lock is not None:
        lock.release()


# Bad input (unknown key, trainer or dataset, missing file) surfaces as one of these while
# preparing; show the message alone. Errors during training keep their traceback, except the
# project's UserInputError (a checkpoint or folder of another run, found when resuming).
USER_ERRORS = (KeyError, ValueError, FileNotFoundError, TypeError, AssertionError)


def finish_distributed():
    import torch.distributed
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def fail(message, code):
    print(f"train.py: error: {message}", file=sys.stderr)
    if code == 2:
        print("(set TRAIN_DEBUG=1 for the full traceback)", file=sys.stderr)
    sys.exit(code)


def main(argv=None):
    args = parse_args(argv)
    debug = bool(os.environ.get("TRAIN_DEBUG"))
    try:
        quick_checks(args)
    except (ValueError, FileNotFoundError) as exc:
        fail(exc, 2)
    from dassl.engine.interrupt import StopOnSignal
    # Ctrl-C / SIGTERM anywhere in the run: one line, exit code 128 + signal, the lock released
    # (training replaces this handler with its own, which first finishes the step and saves).
    stop = StopOnSignal(EVALUATION_STOPPED if args.eval_only else StopOnSignal.AT_ONCE)
    with stop:
        prepare_and_run(args, debug)


EVALUATION_STOPPED = ("Stopped by {name} during evaluation; no result was written. Run the same "
                      "command again to evaluate.")


def prepare_and_run(args, debug):
    from dassl.engine.interrupt import TrainingInterrupted
    from dassl.utils.errors import OutputWriteError, UserInputError
    try:
        trainer = prepare(args)
    except USER_ERRORS + (UserInputError,) as exc:
        if debug:
            raise
        fail(exc.args[0] if isinstance(exc, KeyError) and exc.args else exc, 2)
    except OutputWriteError as exc:
        fail(exc, 2)
    except (KeyboardInterrupt, TrainingInterrupted) as exc:
        signum = getattr(exc, "signum", signal.SIGINT)  # KeyboardInterrupt: SIGINT
        fail("interrupted before training started; nothing was trained.", 128 + int(signum))
    try:
        run(trainer, args)
        finish_distributed()
    except TrainingInterrupted as exc:
        fail(exc, 128 + int(exc.signum))
    except UserInputError as exc:
        if debug:
            raise
        fail(exc, 2)
    except OutputWriteError as exc:
        fail(exc, 1)


if __name__ == "__main__":
    main()
