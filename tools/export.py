"""Export a trained run as a standalone image classifier: ONNX or TorchScript.

    python tools/export.py RUN_DIR --classnames classes.txt --format onnx model.onnx
    python tools/export.py RUN_DIR --classnames classes.txt --format torchscript model.pt
    python predict.py --exported model.onnx photos/

The file maps preprocessed images (B, 3, H, W) to class probabilities (B, C) (softmax of the
logits; the logits are a second output) for the classes of --classnames. The class text is
computed once and baked in; LoRA updates are merged into the weights; methods whose text depends
on each image (CoCoOp, DCP by default) are refused with the reason. The metadata holds the class
names, the trainer and the run's test preprocessing (INPUT.SIZE, PIXEL_MEAN, PIXEL_STD,
INTERPOLATION, TRANSFORMS): ONNX metadata_props, or metadata.json in the TorchScript archive.
Before it is written, the file is run on a random batch and must give the toolbox's
probabilities within 1e-4. Details: results/export.py.
Exit status: 0 written, 2 bad input or a run that cannot be exported.
"""
import argparse
import contextlib
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
# torch and the model code are imported after the arguments are parsed: --help and a wrong flag
# answer before torch loads.

FORMATS = ("onnx", "torchscript")  # as results.export.FORMATS, without importing it before parsing


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model_dir", metavar="RUN_DIR", help="output folder of the training run (holds config.yaml)")
    p.add_argument("--classnames", metavar="FILE", required=True,
                   help="the classes the exported model scores, one name per line")
    p.add_argument("--format", required=True, choices=FORMATS, help="onnx (onnxruntime) or torchscript")
    p.add_argument("output", metavar="OUT", help="the file to write (e.g. model.onnx, model.pt)")
    p.add_argument("--load-epoch", "--load_epoch", dest="load_epoch", type=int,
                   help="load model.pth.tar-N (default: the newest checkpoint)")
    p.add_argument("--opts", nargs="+", default=[], metavar="KEY VALUE",
                   help="config overrides, e.g. MODEL.BACKBONE.PATH ViT-B-16.pt (put it last)")
    # what predict.run_config reads besides these: no dataset, the run's own config.yaml
    p.set_defaults(dataset_config_file="", root="", config_file="", trainer="")
    return p.parse_args(argv)


def export(args):
    import predict
    from results.export import export_run
    if not os.path.isdir(args.model_dir):
        raise predict.PredictError(f'RUN_DIR "{args.model_dir}" is not a folder; pass the output folder of a '
                                   "training run (the one holding config.yaml and the checkpoint folder).")
    if os.path.isdir(args.output):
        example = os.path.join(args.output, "model.onnx" if args.format == "onnx" else "model.pt")
        raise predict.PredictError(f'OUT "{args.output}" is a folder; name the file to write, e.g. {example}.')
    cfg = predict.run_config(args)
    classnames = predict.read_classnames(args.classnames)
    with contextlib.redirect_stdout(sys.stderr):  # the engine's building lines
        trainer = predict.build_predictor(cfg, classnames, args.model_dir, args.load_epoch)
    difference = export_run(trainer, classnames, args.format, args.output)
    print(f"Wrote {args.output}: {cfg.TRAINER.NAME} as {args.format}, {len(classnames)} classes, input "
          f"{cfg.INPUT.SIZE[0]}x{cfg.INPUT.SIZE[1]}; on a random batch its probabilities are within "
          f"{difference:.1e} of the toolbox's. Run it with: python predict.py --exported {args.output} IMAGES")


def main(argv=None):
    args = parse_args(argv)
    import predict
    return predict.report_user_errors("export", export, args)


if __name__ == "__main__":
    sys.exit(main())
