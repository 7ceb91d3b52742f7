"""The provenance table: the effective settings behind each row, read from the runs' logs."""
import train
from dassl.utils.logger import close_logger
from datasets.fake import make_fake_dataset
from results.collect import collect_runs
from results.provenance import provenance_markdown, provenance_rows, read_method_settings

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


def test_a_real_run_trained_with_an_override(tmp_path, tiny_clip_path):
    data = str(tmp_path / "data")
    make_fake_dataset("caltech101", data, num_classes=4, images_per_class=8)
    out = tmp_path / "output/caltech101/CoOp/vit_b16_ep50_ctxv1_2shots/seed1"
    train.main(["--root", data, "--seed", "1", "--trainer", "CoOp", "--dataset-config-file",
                "configs/datasets/caltech101.yaml", "--config-file", "configs/trainers/CoOp/vit_b16_ep50_ctxv1.yaml",
                "--output-dir", str(out), "MODEL.BACKBONE.PATH", tiny_clip_path, "DATALOADER.NUM_WORKERS", "0",
                "DATASET.NUM_SHOTS", "2", "OPTIM.MAX_EPOCH", "1"])
    close_logger()
    (row,) = provenance_rows(collect_runs(str(tmp_path / "output")))
    method, config, overrides, precision, architecture, params, settings, runs = row
    assert (method, config, runs) == ("CoOp", "configs/trainers/CoOp/vit_b16_ep50_ctxv1.yaml", "1")
    assert overrides == "DATALOADER.NUM_WORKERS 0 OPTIM.MAX_EPOCH 1"
    assert precision == "fp32"  # the config asks for fp16, which needs a GPU
    assert architecture != "unknown" and "ViT" in architecture
    assert params == "256"  # 4 context vectors of width 64
    # "a photo of a" is 4 tokens: CoOp's context length as it ran, not the configured 16
    assert "N_CTX 4 (set by CTX_INIT; N_CTX 16)" in settings and "PREC fp16" in settings
