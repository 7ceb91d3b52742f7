"""Classify images with a trained run: top-k classes and their probabilities.

python predict.py --model-dir OUT --load-epoch E --classnames classes.txt photos/ cat.jpg [--topk 5] [--csv F]
python predict.py --model-dir OUT --load-epoch E --dataset-config-file configs/datasets/dtd.yaml --root DATA photos/
python predict.py --exported model.onnx photos/           (a file written by tools/export.py)

The run's settings come from OUT/config.yaml (written by train.py); its trained tensors load
with the engine's own load_model. Checkpoints hold no class-dependent tensors, so the classes
to score can be any list: a file with one class name per line, or a dataset's classes (its
DATASET.SUBSAMPLE_CLASSES as in the run, or as set with --opts). Images get the run's test
transform and are scored in batches of DATALOADER.TEST.BATCH_SIZE, as in its evaluation.
Predictions go to stdout, everything else to stderr.

--exported FILE runs an ONNX model (onnxruntime) or a TorchScript archive written by
tools/export.py instead of a run folder (the format is read from the file: TorchScript archives
are zip files). The file holds its classes and preprocessing; images get the same test transform,
rebuilt from that metadata, and are scored in batches of 32.
"""
import argparse
import contextlib
import csv
import io
import os
import sys
from collections import Counter

# torch, the datasets and the model code are imported by the functions that use them, after the
# arguments are parsed: --help and a wrong flag answer before torch loads.

RUN_CONFIG = "config.yaml"
EXPORTED_BATCH_SIZE = 32  # images per call of an exported model


class PredictError(Exception):
    """Bad input: printed as one line, exit status 2."""


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("images", nargs="+", metavar="IMAGE_OR_FOLDER",
                   help="image files, or folders searched recursively for images")
    p.add_argument("--model-dir", "--model_dir", dest="model_dir", default="",
                   help="output folder of the training run (or --exported)")
    p.add_argument("--exported", metavar="FILE", default="",
                   help="run a model written by tools/export.py (ONNX or TorchScript) instead of a run folder; "
                        "its classes and preprocessing come from the file")
    p.add_argument("--load-epoch", "--load_epoch", dest="load_epoch", type=int,
                   help="load model.pth.tar-N (default: model-best.pth.tar)")
    p.add_argument("--classnames", metavar="FILE", help="the classes to score, one name per line")
    p.add_argument("--dataset-config-file", "--dataset_config", dest="dataset_config_file",
                   help="score the classes of this dataset instead (configs/datasets/X.yaml)")
    p.add_argument("--root", "--dataset_root", dest="root", default="",
                   help="dataset root for --dataset-config-file (default: the run's DATASET.ROOT)")
    p.add_argument("--topk", type=int, default=5, help="classes printed per image (default 5)")
    p.add_argument("--csv", metavar="FILE", help="also write image,rank,class,probability rows")
    p.add_argument("--config-file", "--trainer_config", dest="config_file", default="",
                   help="trainer YAML, only for a run folder without config.yaml (with --trainer)")
    p.add_argument("--trainer", default="", help="trainer name, only with --config-file")
    p.add_argument("--opts", nargs="+", default=[], metavar="KEY VALUE",
                   help="config overrides, e.g. MODEL.BACKBONE.PATH ViT-B-16.pt (put it last)")
    return p.parse_args(argv)


# ---------------------------------------------------------------------------------- config
def run_config(args):
    """The run's effective config (OUT/config.yaml), then the class source and --opts on top."""
    if not os.path.isdir(args.model_dir):
        raise PredictError(f'--model-dir "{args.model_dir}" is not a folder; pass the output folder '
                           "of a training run (the one holding config.yaml and the checkpoint folder).")
    from dassl.engine import TRAINER_REGISTRY  # dassl first: makes torchvision importable on CPU-only torch

    import datasets  # noqa: F401  (registers every dataset)
    import trainers
    cfg = trainers.build_cfg()
    saved = os.path.join(args.model_dir, RUN_CONFIG)
    if os.path.isfile(saved):
        if args.config_file or args.trainer:
            raise PredictError(f'"{args.model_dir}" has its {RUN_CONFIG}, which says how it was trained; '
                               "--trainer and --config-file are only for folders without one: leave them out.")
        cfg.merge_from_file(saved)
    elif args.config_file and args.trainer:
        if not os.path.isfile(args.config_file):
            raise PredictError(f'--config-file "{args.config_file}" does not exist; trainer configs live under '
                               "configs/trainers/<Trainer>/.")
        cfg.merge_from_file(args.config_file)
        cfg.TRAINER.NAME = args.trainer
    else:
        raise PredictError(
            f'"{args.model_dir}" has no {RUN_CONFIG}, so its settings are unknown: it was trained by an '
            "older version of this toolbox or by another code base. Pass the trainer and the config it "
            "was trained with: --trainer NAME --config-file configs/trainers/NAME/X.yaml "
            "(and --opts KEY VALUE ... for any overrides it had).")
    if args.dataset_config_file:
        if not os.path.isfile(args.dataset_config_file):
            raise PredictError(f'--dataset-config-file "{args.dataset_config_file}" does not exist; '
                               "dataset configs live under configs/datasets/.")
        cfg.merge_from_file(args.dataset_config_file)
    if args.root:
        cfg.DATASET.ROOT = args.root
    if len(args.opts) % 2:
        raise PredictError(f"--opts takes KEY VALUE pairs; got an odd number of items: {' '.join(args.opts)}")
    cfg.merge_from_list(args.opts)
    if cfg.TRAINER.NAME not in TRAINER_REGISTRY.registered_names():
        raise PredictError(f'the run names trainer "{cfg.TRAINER.NAME}", which this toolbox does not have; '
                           f"available: {', '.join(sorted(TRAINER_REGISTRY.registered_names()))}.")
    cfg.freeze()
    return cfg


def read_classnames(path):
    """One class name per line; blank lines and lines starting with '#' are skipped."""
    try:
        with open(path, encoding="utf-8") as handle:
            names = [line.strip() for line in handle]
    except OSError as exc:
        raise PredictError(f'cannot read --classnames "{path}" ({exc.strerror}).') from exc
    names = [n for n in names if n and not n.startswith("#")]
    if not names:
        raise PredictError(f'--classnames "{path}" holds no class names; write one name per line.')
    duplicates = sorted(name for name, count in Counter(names).items() if count > 1)
    if duplicates:
        raise PredictError(f'--classnames "{path}" repeats {", ".join(duplicates)}; list each class once.')
    return names


def dataset_classnames(cfg):
    """The dataset's classes in label order (after DATASET.SUBSAMPLE_CLASSES)."""
    from dassl.data.datasets import build_dataset
    cfg = cfg.clone()
    cfg.defrost()
    cfg.DATASET.NUM_SHOTS = -1  # the class list does not depend on the few-shot sample
    return build_dataset(cfg).classnames


# ---------------------------------------------------------------------------------- images
def find_images(paths):
    """Image files named directly, and those found in folders (recursively, sorted)."""
    from datasets.verify import IMAGE_EXTENSIONS
    found = []
    for path in paths:
        if os.path.isfile(path):
            found.append(path)
        elif os.path.isdir(path):
            for folder, dirs, files in os.walk(path):
                dirs.sort()
                found += [os.path.join(folder, f) for f in sorted(files)
                          if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith(".")]
        else:
            raise PredictError(f'"{path}" does not exist; pass image files or folders of images.')
    if not found:
        raise PredictError(f"no images found in {', '.join(paths)} "
                           f"(looked for {', '.join(IMAGE_EXTENSIONS)}).")
    return found


def load_batch(paths, transform):
    import torch

    from dassl.utils import read_image
    images = []
    for path in paths:
        try:
            images.append(transform(read_image(path)))
        except OSError as exc:
            raise PredictError(f'cannot read image "{path}": not an image, or a damaged file '
                               f"({exc.__cause__ or exc}).") from exc
    return torch.stack(images)


# ---------------------------------------------------------------------------------- model
def build_predictor(cfg, classnames, model_dir, load_epoch):
    """The run's trainer with its model built for ``classnames`` and the trained tensors loaded."""
    from dassl.engine import TRAINER_REGISTRY
    trainer = TRAINER_REGISTRY.get(cfg.TRAINER.NAME)(cfg, classnames=classnames)
    trainer.load_model(model_dir, epoch=load_epoch)
    trainer.set_model_mode("eval")
    return trainer


def predict(trainer, paths, transform, topk):
    """[(path, [(class name, probability), ...])] with the top-k classes of each image."""
    import torch
    batch_size = trainer.cfg.DATALOADER.TEST.BATCH_SIZE
    results = []
    for start in range(0, len(paths), batch_size):
        batch = paths[start:start + batch_size]
        with torch.no_grad():
            logits = trainer.model_inference(load_batch(batch, transform).to(trainer.device))
        probabilities = torch.softmax(logits.float(), dim=-1).cpu().numpy()
        results += top_classes(batch, probabilities, trainer.classnames, topk)
    return results


def predict_exported(model, paths, transform, topk):
    """``predict`` for an exported file (results.export.ExportedModel)."""
    results = []
    for start in range(0, len(paths), EXPORTED_BATCH_SIZE):
        batch = paths[start:start + EXPORTED_BATCH_SIZE]
        probabilities = model.probabilities(load_batch(batch, transform).numpy())
        results += top_classes(batch, probabilities, model.classnames, topk)
    return results


def top_classes(paths, probabilities, classnames, topk):
    """[(path, [(class name, probability), ...])] from probabilities (B, C), highest first."""
    import numpy as np
    results = []
    for path, row in zip(paths, probabilities):
        order = np.argsort(-row, kind="stable")[:topk]  # ties keep the label order
        results.append((path, [(classnames[c], float(row[c])) for c in order]))
    return results


def to_csv(results):
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["image", "rank", "class", "probability"])
    for path, top in results:
        for rank, (name, prob) in enumerate(top, 1):
            writer.writerow([path, rank, name, f"{prob:.6f}"])
    return buffer.getvalue()


def check_args(args):
    """Flag combinations, checked before anything heavy loads."""
    if args.topk < 1:
        raise PredictError(f"--topk is {args.topk}; it must be at least 1.")
    if bool(args.model_dir) == bool(args.exported):
        raise PredictError("say what classifies the images: --model-dir RUN_DIR (a training run's output folder) "
                           "or --exported FILE (written by tools/export.py), not both.")
    if args.exported:
        extra = [flag for flag, value in (("--classnames", args.classnames), ("--dataset-config-file",
                 args.dataset_config_file), ("--load-epoch", args.load_epoch), ("--config-file", args.config_file),
                 ("--trainer", args.trainer), ("--opts", args.opts)) if value not in (None, "", [])]
        if extra:
            verb = "does" if len(extra) == 1 else "do"
            raise PredictError(f"{', '.join(extra)} {verb} not apply to --exported: the file holds its classes and "
                               "preprocessing (export again with tools/export.py for other classes).")
    elif bool(args.classnames) == bool(args.dataset_config_file):
        raise PredictError("say which classes to score: --classnames FILE (one name per line) or "
                           "--dataset-config-file configs/datasets/X.yaml --root DATA (not both).")


def score_with_run(args, paths):
    from dassl.data.transforms import build_transform
    cfg = run_config(args)
    # The engine's progress lines would mix with the predictions: they go to stderr.
    with contextlib.redirect_stdout(sys.stderr):
        classnames = read_classnames(args.classnames) if args.classnames else dataset_classnames(cfg)
        trainer = build_predictor(cfg, classnames, args.model_dir, args.load_epoch)
        transform = build_transform(cfg, is_train=False)
        print(f"Scoring {len(paths)} image(s) against {len(classnames)} classes")
    return predict(trainer, paths, transform, args.topk)


def score_with_exported(args, paths):
    from results.export import ExportedModel
    with contextlib.redirect_stdout(sys.stderr):
        model = ExportedModel.load(args.exported)
        transform = model.transform()
        print(f"Scoring {len(paths)} image(s) against {len(model.classnames)} classes "
              f"({model.metadata['trainer']} run exported to {args.exported})")
    return predict_exported(model, paths, transform, args.topk)


def run(args):
    check_args(args)
    from dassl.utils import atomic_write_text
    paths = find_images(args.images)
    results = score_with_exported(args, paths) if args.exported else score_with_run(args, paths)
    for path, top in results:
        print(f"{path}: " + ", ".join(f"{name} {prob:.2%}" for name, prob in top))
    if args.csv:
        atomic_write_text(args.csv, to_csv(results))
        print(f"Predictions written to {args.csv}", file=sys.stderr)
    return results


def is_user_error(exc):
    """Bad input (flags, files, unknown key, missing weights or checkpoint, an exported file that is
    not one, ...): reported as one line. Flag errors are told apart before torch loads."""
    if isinstance(exc, PredictError):
        return True
    from dassl.utils.errors import UserInputError
    from results.export import ExportError
    return isinstance(exc, (ExportError, UserInputError, KeyError, ValueError, FileNotFoundError, TypeError,
                            AssertionError))


def report_user_errors(tool, action, args):
    """``action(args)``; a user error (bad file, folder, option) becomes one line on stderr and exit
    code 2, anything else propagates. ``<TOOL>_DEBUG=1`` shows the traceback of user errors too."""
    debug = f"{tool.upper()}_DEBUG"
    try:
        action(args)
    except Exception as exc:  # noqa: BLE001
        if not is_user_error(exc) or os.environ.get(debug):
            raise
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"{tool}.py: error: {message}", file=sys.stderr)
        print(f"(set {debug}=1 for the full traceback)", file=sys.stderr)
        return 2
    return 0


def main(argv=None):
    args = parse_args(argv)
    if report_user_errors("predict", run, args):
        sys.exit(2)


if __name__ == "__main__":
    main()
