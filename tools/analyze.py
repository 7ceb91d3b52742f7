"""Report what a trained run learned: per-class accuracy, confusions, features before and after
tuning, and its learned text context read as words.

    python tools/analyze.py RUN_DIR --dataset-config-file configs/datasets/dtd.yaml --root DATA OUT_DIR
    python tools/analyze.py RUN_DIR --classnames classes.txt OUT_DIR      (no images: text context only)

Writes OUT_DIR/report.md, OUT_DIR/analysis.json (every number in the report) and PNG figures:
- with a dataset: the run evaluated on the --split images (test by default; the classes are the
  dataset's, after DATASET.SUBSAMPLE_CLASSES as in the run), beside zero-shot CLIP (the same
  backbone without the method, with the dataset's hand-crafted template): accuracy per class, the
  confusion matrix and the 20 most confused pairs (heat map up to 50 classes), which classes gained
  and which lost, t-SNE maps of the image and class text features (UMAP as well when umap-learn is
  installed) with silhouette scores;
- always: the nearest vocabulary tokens of every learned text context vector, per layer for deep
  prompts, by Euclidean and by cosine distance, and the prompt they spell. A part that does not
  apply to the method (no learned text context, text computed per image) says so.
Details: results/analysis.py. Exit status: 0 written, 2 bad input.
"""
import argparse
import contextlib
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
# torch and the model code are imported after the arguments are parsed: --help and a wrong flag
# answer before torch loads.

SPLITS = ("test", "val")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model_dir", metavar="RUN_DIR", help="output folder of the training run (holds config.yaml)")
    p.add_argument("output_dir", metavar="OUT_DIR", help="folder for report.md, analysis.json and the figures")
    p.add_argument("--classnames", metavar="FILE", help="classes to build the model for (no images: text context only)")
    p.add_argument("--dataset-config-file", "--dataset_config", dest="dataset_config_file", default="",
                   help="evaluate on this dataset (configs/datasets/X.yaml)")
    p.add_argument("--root", "--dataset_root", dest="root", default="",
                   help="dataset root for --dataset-config-file (default: the run's DATASET.ROOT)")
    p.add_argument("--split", choices=SPLITS, default="test", help="the dataset split evaluated (default: test)")
    p.add_argument("--load-epoch", "--load_epoch", dest="load_epoch", type=int,
                   help="load model.pth.tar-N (default: the newest checkpoint)")
    p.add_argument("--opts", nargs="+", default=[], metavar="KEY VALUE",
                   help="config overrides, e.g. MODEL.BACKBONE.PATH ViT-B-16.pt (put it last)")
    p.set_defaults(config_file="", trainer="")  # what predict.run_config reads besides these
    return p.parse_args(argv)


def check_args(args):
    import predict
    if not os.path.isdir(args.model_dir):
        raise predict.PredictError(f'RUN_DIR "{args.model_dir}" is not a folder; pass the output folder of a '
                                   "training run (the one holding config.yaml and the checkpoint folder).")
    if bool(args.classnames) == bool(args.dataset_config_file):
        raise predict.PredictError("say which classes to analyse: --dataset-config-file configs/datasets/X.yaml "
                                   "--root DATA (evaluates on its images) or --classnames FILE (no images: "
                                   "text context only), not both.")
    if os.path.isfile(args.output_dir):
        raise predict.PredictError(f'OUT_DIR "{args.output_dir}" is a file; name a folder for the report.')


def image_batches(paths, labels, transform, batch_size):
    """(images, labels) batches read as predict.py reads its images."""
    import predict
    for start in range(0, len(paths), batch_size):
        yield predict.load_batch(paths[start:start + batch_size], transform), labels[start:start + batch_size]


def analyze(args):
    import predict
    check_args(args)
    from dassl.data.transforms import build_transform
    from datasets.templates import dataset_template
    from results import analysis
    cfg = predict.run_config(args)
    with contextlib.redirect_stdout(sys.stderr):  # the engine's building lines
        if args.dataset_config_file:
            classnames, paths, labels = analysis.split_items(cfg, args.split)
        else:
            classnames, paths, labels = predict.read_classnames(args.classnames), None, None
        trainer = predict.build_predictor(cfg, classnames, args.model_dir, args.load_epoch)
        transform = build_transform(cfg, is_train=False)
    template = dataset_template(cfg.DATASET.NAME)
    outputs = None
    if paths is not None:
        print(f"Evaluating {len(paths)} {args.split} images of {len(classnames)} classes", file=sys.stderr)
        batches = image_batches(paths, labels, transform, cfg.DATALOADER.TEST.BATCH_SIZE)
        outputs = analysis.evaluate_split(trainer, batches, template)
    facts = {"run": args.model_dir, "trainer": cfg.TRAINER.NAME, "backbone": cfg.MODEL.BACKBONE.NAME,
             "dataset": cfg.DATASET.NAME, "template": template,
             # the epoch the engine loaded (what results.json calls model_epoch)
             "checkpoint": f"epoch {trainer._model_epoch}" if getattr(trainer, "_model_epoch", None) else "none"}
    report = analysis.build_report(trainer, facts, outputs, args.split)
    analysis.write_report(args.output_dir, report)
    print(f"Wrote {os.path.join(args.output_dir, analysis.REPORT_FILE)} ({len(report.figures)} figures, numbers in "
          f"{analysis.FACTS_FILE})")


def main(argv=None):
    args = parse_args(argv)
    import predict
    return predict.report_user_errors("analyze", analyze, args)


if __name__ == "__main__":
    sys.exit(main())
