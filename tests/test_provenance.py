"""The provenance table: the effective settings behind each row, read from the runs' run_facts.json,
and from their logs for older runs without one."""
import json

import pytest

import train
from dassl.utils.logger import close_logger
from datasets.fake import make_fake_dataset
from results.collect import collect_runs
from results.provenance import provenance_markdown, provenance_rows, read_method_settings
from results.run_facts import RunFactsError
from train_runs import checkpoint_numel

LOG = """***************
** Config **
***************
TRAINER:
  COOP:
    N_CTX: 16
  MUDPT:
    CTX_INIT: a photo of a
    DEEP_PROMPT_DEPTH: 12
    INJECTION: linear
    N_CTX: 2
    SHALLOW_FUSION: True
  NAME: MuDPT
USE_CUDA: True
Building custom CLIP
# trainable params: 1,202,176
epoch [1/10] batch [1/5] time 0.1 (0.1) data 0.0 (0.0) loss 1.0 (1.0) lr 1.0000e-05 eta 0:00:01
"""


def test_settings_and_parameter_count_are_read_from_the_log(tmp_path):
    run = tmp_path / "base2new/train_base/dtd/shots_16/MuDPT/vit_b16_released_linear_nctx2_depth8/seed1"
    run.mkdir(parents=True)
    (run / "log.txt").write_text(LOG)
    settings, params = read_method_settings(str(run / "log.txt"), "MuDPT")
    assert settings == {"CTX_INIT": "a photo of a", "DEEP_PROMPT_DEPTH": "12", "INJECTION": "linear",
                        "N_CTX": "2", "SHALLOW_FUSION": "True"}
    assert params == "1,202,176"
    table = provenance_markdown(collect_runs(str(tmp_path)))
    # a log without the arguments block and the Precision / CLIP lines: what is unknown says so
    assert ("| MuDPT | vit_b16_released_linear_nctx2_depth8 | - | unknown | unknown | 1,202,176 | "
            "CTX_INIT a photo of a, DEEP_PROMPT_DEPTH 12, INJECTION linear, N_CTX 2, SHALLOW_FUSION True | 1 |"
            ) in table


def arguments_block(opts, eval_only=False):
    return ("***************\n** Arguments **\n***************\n"
            "config_file: configs/trainers/MuDPT/vit_b16_released_linear_nctx2_depth8.yaml\n"
            f"eval_only: {eval_only}\nopts: {opts!r}\nseed: 1\n")


def test_overrides_precision_and_architecture_from_the_log(tmp_path):
    """Rows follow the effective settings of the training runs; eval-only runs only load them."""
    folder = tmp_path / "base2new/{}/dtd/shots_16/MuDPT/vit_b16_released_linear_nctx2_depth8/seed{}"
    facts = "Precision: amp\nCLIP architecture: ViT-B/16\n"
    for seed, opts in ((1, ["OPTIM.MAX_EPOCH", "1"]), (2, []), (3, [])):
        run = tmp_path / str(folder).format("train_base", seed)
        run.mkdir(parents=True)
        (run / "log.txt").write_text(arguments_block(["MODEL.BACKBONE.PATH", "/w/ViT-B-16.pt",
                                                      "DATASET.SUBSAMPLE_CLASSES", "base"] + opts)
                                     + LOG + facts)
    new = tmp_path / str(folder).format("test_new", 1)
    new.mkdir(parents=True)
    (new / "log.txt").write_text(arguments_block(["OPTIM.LR", "9"], eval_only=True) + LOG + facts)
    rows = provenance_rows(collect_runs(str(tmp_path)))
    settings = "CTX_INIT a photo of a, DEEP_PROMPT_DEPTH 12, INJECTION linear, N_CTX 2, SHALLOW_FUSION True"
    config = "configs/trainers/MuDPT/vit_b16_released_linear_nctx2_depth8.yaml"
    assert rows == [("MuDPT", config, "-", "amp", "ViT-B/16", "1,202,176", settings, "2"),
                    ("MuDPT", config, "OPTIM.MAX_EPOCH 1", "amp", "ViT-B/16", "1,202,176", settings, "1")]


TINY_CLIP = "ViT (custom: width 64, 12 layers, patch 32, 224 px)"  # what the tiny CLIP's shapes are


def train_one_epoch(tmp_path, clip_path, trainer, config):
    """A 1-epoch, 2-shot run on a generated Caltech101; its output folder."""
    data = str(tmp_path / "data")
    make_fake_dataset("caltech101", data, num_classes=4, images_per_class=8)
    out = tmp_path / f"output/caltech101/{trainer}/{config}_2shots/seed1"
    train.main(["--root", data, "--seed", "1", "--trainer", trainer, "--dataset-config-file",
                "configs/datasets/caltech101.yaml", "--config-file", f"configs/trainers/{trainer}/{config}.yaml",
                "--output-dir", str(out), "MODEL.BACKBONE.PATH", clip_path, "DATALOADER.NUM_WORKERS", "0",
                "DATASET.NUM_SHOTS", "2", "OPTIM.MAX_EPOCH", "1"])
    close_logger()
    return out


def test_a_real_run_trained_with_an_override(tmp_path, tiny_clip_path):
    train_one_epoch(tmp_path, tiny_clip_path, "CoOp", "vit_b16_ep50_ctxv1")
    (row,) = provenance_rows(collect_runs(str(tmp_path / "output")))
    method, config, overrides, precision, architecture, params, settings, runs = row
    assert (method, config, runs) == ("CoOp", "configs/trainers/CoOp/vit_b16_ep50_ctxv1.yaml", "1")
    assert overrides == "DATALOADER.NUM_WORKERS 0 OPTIM.MAX_EPOCH 1"
    assert precision == "fp32"  # the config asks for fp16, which needs a GPU
    assert architecture != "unknown" and "ViT" in architecture
    assert params == "256"  # 4 context vectors of width 64
    # "a photo of a" is 4 tokens: CoOp's context length as it ran, not the configured 16
    assert "N_CTX 4 (set by CTX_INIT; N_CTX 16)" in settings and "PREC fp16" in settings


def test_a_run_writes_its_facts_and_the_table_reads_them(tmp_path, tiny_clip_path):
    out = train_one_epoch(tmp_path, tiny_clip_path, "CoOp", "vit_b16_ep50_ctxv1")
    facts = json.loads((out / "run_facts.json").read_text())
    assert facts == {
        "backbone": "ViT-B/16", "family": "openai", "architecture": TINY_CLIP, "trainer": "CoOp",
        "trainable_params": 256, "trainable_names": ["ctx"], "n_ctx": 4, "prompt_text": "a photo of a",
        "precision": "fp32",  # the config asks for fp16, which needs a GPU
        "dataset": "Caltech101", "seed": 1, "descriptions": None, "format": 1}  # CoOp reads no descriptions
    assert facts["trainable_params"] == checkpoint_numel(out / "prompt_learner" / "model.pth.tar-1")
    assert {p.name for p in out.iterdir()} >= {"config.yaml", "run_facts.json", "log.txt"}

    # The table shows the file's facts, not the log's: edit the file, and the row follows it.
    facts.update(precision="amp", architecture="ViT-L/14", trainable_params=1234567, n_ctx=16)
    (out / "run_facts.json").write_text(json.dumps(facts))
    (row,) = provenance_rows(collect_runs(str(tmp_path / "output")))
    assert row[3:6] == ("amp", "ViT-L/14", "1,234,567")
    assert "N_CTX 16," in row[6]  # 16 as CTX_INIT left it, by the file: no "set by CTX_INIT" note

    # An older run without the file: the same cells from its log lines.
    (out / "run_facts.json").unlink()
    (row,) = provenance_rows(collect_runs(str(tmp_path / "output")))
    assert row[3:6] == ("fp32", TINY_CLIP, "256")
    assert "N_CTX 4 (set by CTX_INIT; N_CTX 16)" in row[6]


def test_dcp_context_length_from_its_facts_and_from_its_log(tmp_path, tiny_clip_path):
    """DCP prints "Number of context words (tokens): 16; refined blocks ..." on one line: the row's
    N_CTX is 16, read from run_facts.json, and from the line's leading number for an older run."""
    out = train_one_epoch(tmp_path, tiny_clip_path, "DCP", "vit_b16_c2_ep20_batch4_16ctx")
    assert "Number of context words (tokens): 16; refined blocks 1..9;" in (out / "log.txt").read_text()
    facts = json.loads((out / "run_facts.json").read_text())
    assert (facts["n_ctx"], facts["prompt_text"], facts["precision"]) == (16, " ".join(["X"] * 16), "fp32")
    assert facts["trainable_params"] == checkpoint_numel(out / "MultiModalPromptLearner" / "model.pth.tar-1")
    assert {"prompts_text", "prompts_visual"} <= set(facts["trainable_names"])
    settings = "CTX_INIT , FUSING none, N_CTX 16, PREC fp32, PROMPT_DEPTH 9, PS True, UPDATE_TEXT True"
    (row,) = provenance_rows(collect_runs(str(tmp_path / "output")))
    assert row[3:] == ("fp32", TINY_CLIP, f"{facts['trainable_params']:,}", settings, "1")
    (out / "run_facts.json").unlink()
    (row,) = provenance_rows(collect_runs(str(tmp_path / "output")))
    assert row[3:] == ("fp32", TINY_CLIP, f"{facts['trainable_params']:,}", settings, "1")


def test_a_broken_facts_file_is_named_with_what_to_do(tmp_path):
    run = tmp_path / "base2new/train_base/dtd/shots_16/MuDPT/vit_b16_released_linear_nctx2_depth8/seed1"
    run.mkdir(parents=True)
    (run / "log.txt").write_text(LOG)
    (run / "run_facts.json").write_text("{not json")
    with pytest.raises(RunFactsError, match=r"run_facts.json.*Delete it to read the run's facts from its log.txt"):
        provenance_rows(collect_runs(str(tmp_path)))
