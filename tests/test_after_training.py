"""After training: tools/analyze.py's report, tools/export.py's standalone models, predict.py --exported.

Four small real runs (CoOp, MuDPT, MaPLe, CLIP-LoRA, one epoch on a generated Caltech101 with the
tiny CLIP) serve every test; the numbers are checked against the runs' own evaluation and the
toolbox's logits.
"""
import argparse
import contextlib
import io
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

import predict
import trainers
from dassl.data.transforms import build_transform
from dassl.engine import TRAINER_REGISTRY
from datasets.fake import make_fake_dataset
from results import analysis
from results.export import ExportedModel, ExportError, export_run
from tool_modules import load_tool
from train_runs import exit_code, train_argv

DATASET_CONFIG = "configs/datasets/caltech101.yaml"
CLASSES = 4
RUNS = {  # trainer: (config, overrides)
    "CoOp": ("vit_b16", ["TRAINER.COOP.N_CTX", "4"]),
    "MuDPT": ("vit_b16_bz4_ep10_nctx4_depth12", []),
    "MaPLe": ("vit_b16_c2_ep5_batch4_2ctx", []),
    # a large LR, so that the low-rank updates after one step change the probabilities visibly
    "CLIPLoRA": ("vit_b16_r2", ["TRAINER.CLIPLORA.N_ITERS", "0", "OPTIM.LR", "0.05"]),
}
analyze_tool, export_tool = load_tool("analyze"), load_tool("export")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def quietly(function, *args):
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        return function(*args)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_clip_path):
    """Each trainer trained one epoch (4 shots) on 4 generated classes; the test split has 8 images."""
    tmp = tmp_path_factory.mktemp("after_training")
    data = str(tmp / "data")
    make_fake_dataset("caltech101", data, num_classes=CLASSES, images_per_class=6)
    folders = {}
    for name, (config, opts) in RUNS.items():
        out = tmp / name
        argv = train_argv(data, tiny_clip_path, out, name, config,
                          opts=["OPTIM.MAX_EPOCH", "1", "DATASET.NUM_SHOTS", "4", *opts])
        assert quietly(exit_code, argv) == 0
        folders[name] = str(out)
    names = quietly(predict.dataset_classnames, run_cfg(folders["CoOp"], data))
    classnames = tmp / "classes.txt"
    classnames.write_text("\n".join(names) + "\n")
    return {"tmp": tmp, "data": data, "folders": folders, "classnames": str(classnames), "names": names,
            "clip": tiny_clip_path}


def run_cfg(folder, data=""):
    """A run's config as predict.py reads it, with the generated dataset when ``data`` is given."""
    args = argparse.Namespace(model_dir=folder, config_file="", trainer="", opts=[], root=data,
                              dataset_config_file=DATASET_CONFIG if data else "")
    return predict.run_config(args)


def split_of(runs):
    """(paths, labels) of the generated test split, in the evaluation's order."""
    _, paths, labels = quietly(analysis.split_items, run_cfg(runs["folders"]["CoOp"], runs["data"]), "test")
    return paths, labels


# ---------------------------------------------------------------------------------- analysis
def analyze(runs, trainer, *flags):
    out = runs["tmp"] / f"report_{trainer}_{'dataset' if '--dataset-config-file' in flags else 'classes'}"
    assert quietly(analyze_tool.main, [runs["folders"][trainer], str(out), *flags]) == 0
    with open(out / analysis.FACTS_FILE) as f:
        facts = json.load(f)
    return out, (out / analysis.REPORT_FILE).read_text(), facts


def zero_shot_accuracy(runs):
    """Zero-shot CLIP's test accuracy as train.py --eval-only reports it (same data, same tiny CLIP)."""
    out = runs["tmp"] / "zero_shot"
    argv = train_argv(runs["data"], runs["clip"], out, "ZeroshotCLIP", "vit_b16", flags=["--eval-only"],
                      opts=["DATASET.NUM_SHOTS", "4"])
    assert quietly(exit_code, argv) == 0
    with open(out / "results.json") as f:
        return json.load(f)["metrics"]["accuracy"]


@pytest.mark.parametrize("trainer,layers,slots", [("CoOp", 1, 4), ("MuDPT", 12, 4)])
def test_analyze_writes_every_part(runs, trainer, layers, slots):
    out, report, facts = analyze(runs, trainer, "--dataset-config-file", DATASET_CONFIG, "--root", runs["data"])
    for heading in ("## Accuracy", "## Per-class accuracy", "## Confusions", "## Zero-shot to tuned, per class",
                    "### Gained most", "### Lost most", "## Features before and after tuning",
                    "## Learned text context", "### Decoded prompts"):
        assert heading in report, heading
    for figure in ("confusion.png", "class_change.png", "features_tsne.png"):
        assert (out / figure).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"]({figure})" in report

    # the tuned numbers are the run's own evaluation of the same test images
    with open(os.path.join(runs["folders"][trainer], "results.json")) as f:
        run_accuracy = json.load(f)["metrics"]["accuracy"]
    assert facts["accuracy"]["tuned"] == pytest.approx(run_accuracy)
    matrix = np.array(facts["confusion_matrix"])
    assert matrix.shape == (CLASSES, CLASSES) and matrix.sum() == 8
    assert 100.0 * np.trace(matrix) / matrix.sum() == pytest.approx(run_accuracy)
    per_class = facts["per_class"]
    assert [row["class"] for row in per_class] == runs["names"]
    assert [row["images"] for row in per_class] == matrix.sum(axis=1).tolist()
    assert [row["tuned"] for row in per_class] == pytest.approx((100.0 * np.diag(matrix) / matrix.sum(axis=1)).tolist())
    assert sum(p["count"] for p in facts["most_confused"]) == matrix.sum() - np.trace(matrix)
    gained, lost = facts["change"]["gained"], facts["change"]["lost"]
    assert len(gained) + len(lost) + facts["change"]["unchanged"] == CLASSES
    for row in per_class:
        assert (row["class"] in gained) == (row["tuned"] > row["zero_shot"])
        assert (row["class"] in lost) == (row["tuned"] < row["zero_shot"])
    assert all(-1 <= facts["silhouette"][k] <= 1 for k in ("zero_shot", "tuned"))
    # zero-shot CLIP is the ZeroshotCLIP trainer's evaluation
    assert facts["accuracy"]["zero_shot"] == pytest.approx(zero_shot_accuracy(runs))

    context = facts["text_context"]
    assert len(context["layers"]) == layers and all(len(r["slots"]) == slots for r in context["layers"])
    for reading in context["layers"]:
        words = reading["prompt_euclidean"].split(" ")
        assert len(words) == slots  # one token per context vector: its nearest
        for word, tokens in zip(words, reading["slots"]):
            distances = [d for _, d in tokens["euclidean"]]
            assert len(distances) == analysis.NEAREST_K and distances == sorted(distances)
            assert tokens["euclidean"][0][0] == word


def test_analyze_without_images_states_what_needs_a_dataset(runs):
    out, report, facts = analyze(runs, "MuDPT", "--classnames", runs["classnames"])
    for heading in ("Per-class accuracy", "Confusions", "Zero-shot to tuned, per class",
                    "Features before and after tuning"):
        assert f"## {heading}\n\nNot computed: this part needs images of a dataset" in report
    assert "accuracy" not in facts and len(facts["text_context"]["layers"]) == 12
    assert not list(out.glob("*.png"))


def test_a_method_without_text_context_says_so(runs):
    _, report, facts = analyze(runs, "CLIPLoRA", "--classnames", runs["classnames"])
    assert "CLIPLoRA learns no text context" in report and "absent" in facts["text_context"]


def build_untrained(name, tiny_clip_path, classnames=("red star", "blue moon"), **keys):
    """``name``'s trainer built for ``classnames`` with the tiny CLIP; ``keys`` like COOP__N_CTX=2."""
    cfg = trainers.build_cfg()
    cfg.TRAINER.NAME = name
    for key, value in keys.items():
        node, option = key.split("__")
        setattr(getattr(cfg.TRAINER, node), option, value)
    cfg.DATASET.NUM_SHOTS = 16
    cfg.MODEL.BACKBONE.PATH = tiny_clip_path
    cfg.freeze()
    return quietly(TRAINER_REGISTRY.get(name), cfg, list(classnames))


@pytest.mark.parametrize("name,keys", [("CoOp", {"COOP__CTX_INIT": "a photo of a"}), ("MuDPT", {}), ("KgCoOp", {})])
def test_an_untrained_word_initialised_context_reads_as_its_words(name, keys, tiny_clip_path):
    """Context initialised from "a photo of a" and not trained decodes back to "a photo of a"."""
    trainer = build_untrained(name, tiny_clip_path, **keys)
    context = analysis.learned_context(trainer.model, name)
    embeddings = analysis.token_embeddings(trainer.model)
    readings = analysis.read_context(context, embeddings, analysis.Vocabulary(trainer.model.text_encoder))
    first = readings[0]
    assert first["layer"] == "layer 0 (input)" and first["class"] is None
    assert first["prompt_euclidean"] == first["prompt_cosine"] == "a photo of a"
    assert [slot["euclidean"][0][1] for slot in first["slots"]] == pytest.approx([0.0] * 4, abs=1e-6)


def test_another_vocabulary_is_shown_as_ids(tiny_clip_model):
    """A tokenizer that does not give OpenAI's ids (SigLIP's, ...) is not decoded with OpenAI's BPE."""
    from types import SimpleNamespace
    openai = analysis.Vocabulary(SimpleNamespace(
        token_embedding=tiny_clip_model.token_embedding, prompt_start=1,
        tokenize=lambda texts: torch.tensor([[49406, 320, 1125, 539, 320, 736, 1565, 269, 49407]])))
    other = analysis.Vocabulary(SimpleNamespace(
        token_embedding=tiny_clip_model.token_embedding, prompt_start=0,
        tokenize=lambda texts: torch.tensor([[7, 81, 3, 9, 7, 11, 12, 2, 1]])))
    assert openai.text([320, 1125]) == "a photo" and not openai.note
    assert other.text([320, 1125]) == "#320 #1125" and "shown as ids" in other.note


def test_image_dependent_text_and_class_specific_context(tiny_clip_path):
    cocoop = build_untrained("CoCoOp", tiny_clip_path, COCOOP__CTX_INIT="a photo of a", COCOOP__N_CTX=4)
    context = analysis.learned_context(cocoop.model, "CoCoOp")
    assert "shifted for each image" in context.notes[0] and context.layers[0].vectors.shape == (4, 64)
    csc = build_untrained("CoOp", tiny_clip_path, COOP__N_CTX=2, COOP__CSC=True)
    context = analysis.learned_context(csc.model, "CoOp")
    layer = context.layers[0]
    assert layer.per_class and layer.vectors.shape == (2, 2, 64)
    ctx = csc.model.prompt_learner.ctx.detach().numpy()
    assert np.array_equal(layer.vectors, ctx)  # the rows the tower receives are the learned tensor


# ---------------------------------------------------------------------------------- export
@pytest.fixture(scope="module")
def toolbox(runs):
    """{trainer: (preprocessed test images, probabilities, logits)}: each run's model through the
    toolbox (predict.py's loading, the evaluation's model_inference), computed once."""
    computed = {}
    for name, folder in runs["folders"].items():
        cfg = run_cfg(folder)
        trainer = quietly(predict.build_predictor, cfg, runs["names"], folder, None)
        images = preprocessed_test_images(runs, cfg)
        with torch.no_grad():
            logits = trainer.model_inference(images).float()
        computed[name] = (images, torch.softmax(logits, dim=-1).numpy(), logits.numpy())
    return computed


def preprocessed_test_images(runs, cfg):
    paths, _ = split_of(runs)
    transform = quietly(build_transform, cfg, False)
    return predict.load_batch(paths, transform)


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
@pytest.mark.parametrize("trainer", list(RUNS))
def test_exported_model_equals_the_toolbox(runs, toolbox, trainer, fmt):
    out = runs["tmp"] / f"{trainer}.{fmt}"
    argv = [runs["folders"][trainer], "--classnames", runs["classnames"], "--format", fmt, str(out)]
    assert quietly(export_tool.main, argv) == 0
    model = quietly(ExportedModel.load, str(out))
    assert model.metadata["trainer"] == trainer and model.classnames == runs["names"]
    assert model.metadata["input_size"] == [224, 224] and model.metadata["interpolation"] == "bicubic"
    assert model.metadata["pixel_mean"] == pytest.approx([0.48145466, 0.4578275, 0.40821073])

    images, expected_probs, expected_logits = toolbox[trainer]
    probabilities, logits = model.outputs(images.numpy())
    assert probabilities.shape == (8, CLASSES)
    assert np.abs(probabilities - expected_probs).max() <= 1e-4
    assert np.abs(logits - expected_logits).max() <= 1e-4
    assert probabilities.sum(axis=1) == pytest.approx(np.ones(8), abs=1e-5)


def test_the_lora_check_can_tell_merged_from_dropped(runs, toolbox):
    """The run's LoRA updates move the probabilities by far more than the tolerance: an export that
    dropped them instead of merging them would fail the equality test."""
    images, lora_probs, _ = toolbox["CLIPLoRA"]
    zero_shot = build_untrained("ZeroshotCLIP", runs["clip"], runs["names"])  # the same template, no LoRA
    with torch.no_grad():
        plain = torch.softmax(zero_shot.model_inference(images).float(), dim=-1).numpy()
    assert np.abs(lora_probs - plain).max() > 1e-2


def test_predict_runs_an_exported_onnx_file(runs, tmp_path, capsys):
    onnx_path = tmp_path / "mudpt.onnx"
    assert quietly(export_tool.main, [runs["folders"]["MuDPT"], "--classnames", runs["classnames"],
                                      "--format", "onnx", str(onnx_path)]) == 0
    paths, _ = split_of(runs)
    from_run, from_file = tmp_path / "run.csv", tmp_path / "file.csv"
    predict.main(["--model-dir", runs["folders"]["MuDPT"], "--classnames", runs["classnames"], *paths,
                  "--topk", "4", "--csv", str(from_run)])
    capsys.readouterr()
    predict.main(["--exported", str(onnx_path), *paths, "--topk", "4", "--csv", str(from_file)])
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(": ")[0] for line in lines] == paths
    run_rows = [row.split(",") for row in from_run.read_text().splitlines()[1:]]
    file_rows = [row.split(",") for row in from_file.read_text().splitlines()[1:]]
    assert len(file_rows) == 4 * len(paths)
    assert [r[:3] for r in file_rows] == [r[:3] for r in run_rows]  # same classes in the same order
    assert [float(r[3]) for r in file_rows] == pytest.approx([float(r[3]) for r in run_rows], abs=1e-4)


def test_export_refusals_and_bad_files(runs, tiny_clip_path, tmp_path, capsys):
    cocoop = build_untrained("CoCoOp", tiny_clip_path)
    with pytest.raises(ExportError, match="depends on each image.*predict.py --model-dir"):
        export_run(cocoop, cocoop.classnames, "onnx", str(tmp_path / "cocoop.onnx"))
    mma = build_untrained("MMA", tiny_clip_path)
    with pytest.raises(ExportError, match="TorchScript.*Use --format onnx"):
        quietly(export_run, mma, mma.classnames, "torchscript", str(tmp_path / "mma.pt"))
    assert not list(tmp_path.iterdir())  # nothing written

    assert export_tool.main([runs["folders"]["CoOp"], "--classnames", runs["classnames"], "--format", "onnx",
                             str(tmp_path)]) == 2
    assert "is a folder; name the file to write" in capsys.readouterr().err
    not_a_model = tmp_path / "image.png"
    from PIL import Image
    Image.new("RGB", (8, 8)).save(not_a_model)
    with pytest.raises(SystemExit):
        predict.main(["--exported", str(not_a_model), str(not_a_model)])
    assert "neither a TorchScript archive nor a readable ONNX model" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        predict.main(["--exported", str(not_a_model), "--classnames", runs["classnames"], str(not_a_model)])
    assert "--classnames does not apply to --exported" in capsys.readouterr().err


# ---------------------------------------------------------------------------------- start-up
# (--help and wrong flags of every entry point: tests/test_entry_points_fast.py)
TORCH_IMPORT = re.compile(r"^import time:.*\|\s*torch$", re.MULTILINE)


def test_a_bad_flag_combination_answers_without_torch():
    done = subprocess.run([sys.executable, "-X", "importtime", "predict.py", "--topk", "0", "--exported", "m.onnx",
                           "a.png"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "predict.py: error: --topk is 0" in done.stderr
    assert not TORCH_IMPORT.search(done.stderr)
