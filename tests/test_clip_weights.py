"""MODEL.BACKBONE.PATH: each kind of bad weights file, and a NAME the file contradicts, stops
train.py with one message (exit code 2) naming the file and what was looked for."""
import os

import pytest
import torch

import train_runs
from datasets.fake import make_fake_dataset
from train_runs import restore_streams, train_argv  # noqa: F401  (fixture)
from trainers.clip_prompting.loading import build_clip

MUDPT = "configs/trainers/MuDPT/vit_b16_bz4_ep10_nctx4_depth12.yaml"


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    make_fake_dataset("caltech101", str(root), num_classes=2, images_per_class=4)
    return str(root)


def error_of(capsys, data_root, tmp_path, weights, *opts, config="configs/trainers/CoOp/vit_b16_ep50_ctxv1.yaml"):
    trainer = "MuDPT" if "MuDPT" in config else "CoOp"
    argv = train_argv(data_root, weights, tmp_path / "out", trainer, os.path.basename(config)[:-5], opts=opts)
    return train_runs.error_of(capsys, argv)


def test_a_file_that_is_not_clip_weights_gets_its_own_message(data_root, tiny_clip_path, tmp_path, capsys):
    text = tmp_path / "ViT-B-16.pt"
    text.write_text("<html><body>404 Not Found</body></html>\n")
    err = error_of(capsys, data_root, tmp_path, text)
    assert str(text) in err and "is not a PyTorch file" in err and "looked for CLIP weights" in err

    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    err = error_of(capsys, data_root, tmp_path, empty)
    assert str(empty) in err and "is empty (0 bytes)" in err

    data = open(tiny_clip_path, "rb").read()
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(data[:len(data) // 2])
    err = error_of(capsys, data_root, tmp_path, truncated)
    assert str(truncated) in err and "truncated or corrupt" in err

    foreign = tmp_path / "resnet18.pt"
    torch.save({"conv1.weight": torch.zeros(2, 3, 1, 1), "fc.weight": torch.zeros(2, 2)}, foreign)
    err = error_of(capsys, data_root, tmp_path, foreign)
    assert str(foreign) in err and "does not hold a CLIP state dict" in err
    assert "token_embedding.weight" in err and "it has conv1.weight, fc.weight" in err


def test_backbone_name_that_contradicts_the_file_stops_the_run(data_root, tiny_clip_path, tmp_path, capsys):
    err = error_of(capsys, data_root, tmp_path, tiny_clip_path, "MODEL.BACKBONE.NAME", "RN50")
    assert "MODEL.BACKBONE.NAME is RN50" in err and tiny_clip_path in err
    assert "holds ViT (custom: width 64, 12 layers, patch 32, 224 px) weights" in err


def test_resnet_weights_for_a_visual_prompt_method_name_the_file_architecture(data_root, tmp_path, capsys):
    resnet = tmp_path / "small_resnet_clip.pt"
    torch.save(build_clip(64, 224, (1, 1, 1, 1), 16, None, transformer_width=64, transformer_layers=2).state_dict(),
               resnet)
    architecture = "ResNet (custom: blocks 1-1-1-1, width 16, 224 px)"
    # the configs' NAME ViT-B/16 with a ResNet file: stopped at loading, naming what the file holds
    err = error_of(capsys, data_root, tmp_path, resnet, config=MUDPT)
    assert f"MODEL.BACKBONE.NAME is ViT-B/16, but \"{resnet}\" holds {architecture} weights" in err
    # a ResNet name: loading passes, MuDPT refuses the backbone without contradicting the name
    err = error_of(capsys, data_root, tmp_path, resnet, "MODEL.BACKBONE.NAME", "RN50", config=MUDPT)
    assert (f"TRAINER.MUDPT: this method works inside the image transformer, so it needs a ViT backbone "
            f"(MODEL.BACKBONE.NAME is RN50, but the CLIP weights are {architecture})") in err
