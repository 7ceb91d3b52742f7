"""Every trainer learns: a few steps on the synthetic benchmark with the pretrained mini-CLIP lower
the training loss and lift base accuracy above zero-shot CLIP's, on the training shots and on the
held-out base test images.

The weights (assets/mini_clip.pt) were pretrained on the synthetic world; the benchmark's shifted
domain leaves zero-shot CLIP room to improve. A method whose prompts stopped reaching the
encoders, whose gradient is cut or whose loss has the wrong sign fails here, where the shape
tests with the random tiny CLIP cannot notice. Each trainer runs its own base-to-new config (the
one ``scripts/<method>/base2new_train.sh`` uses) through train.py's real path, with a short
schedule and the overrides of its entry below.
"""
import hashlib
import os
import re
from dataclasses import dataclass, field

import pytest
import torch
import torch.nn.functional as F

import train
from dassl.engine import TRAINER_REGISTRY
from dassl.utils import read_image
from dassl.utils.logger import close_logger
from datasets.synthetic import shapes
from method_configs import base2new_config, project_trainers, script_folders
from train_runs import train_argv

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MINI_CLIP = os.path.join(REPO, "assets", "mini_clip.pt")
TRAINING_FREE = {"ZeroshotCLIP", "ZeroshotCLIP2"}
# A small copy of the benchmark: the same images as the first ones of each split of the full one.
SIZES = {"train": 4, "val": 1, "test": 4}
# The configs' own transforms (random crops and flips), as in the demo.
COMMON = ["DATALOADER.NUM_WORKERS", "0", "DATALOADER.TEST.BATCH_SIZE", "64", "DATASET.NUM_SHOTS", "4",
          "DATASET.SUBSAMPLE_CLASSES", "base", "OPTIM.WARMUP_EPOCH", "0", "TEST.FINAL_MODEL", "last_step"]


@dataclass
class Entry:
    """How one trainer is run here: what its base-to-new config is overridden with."""

    epochs: int = 1
    lr: float = None          # None: the config's learning rate
    opts: list = field(default_factory=list)


# One entry per trainer in TRAINER_REGISTRY (the training-free ones excepted): a trainer registered
# without an entry fails test_every_trainer_has_a_learning_entry.
LEARNING = {
    "CoOp": Entry(epochs=12, lr=0.01, opts=["DATALOADER.TRAIN_X.BATCH_SIZE", "8"]),
    "CoCoOp": Entry(epochs=5, lr=0.02, opts=["DATASET.NUM_SHOTS", "2"]),
    "KgCoOp": Entry(epochs=8, lr=0.01, opts=["DATALOADER.TRAIN_X.BATCH_SIZE", "8"]),
    "MuDPT": Entry(),
    "MaPLe": Entry(lr=0.02),
    "IVLP": Entry(lr=0.02),
    "VPT": Entry(epochs=2, lr=0.02),
    # DCP and DPT start from 16 random context words, which the mini-CLIP (pretrained on captions
    # only) reads as noise: start them from "a photo of a" as the other methods do
    "DCP": Entry(opts=["TRAINER.DCP.N_CTX", "4", "TRAINER.DCP.CTX_INIT", "a photo of a"]),
    "DPT": Entry(epochs=3, lr=0.01, opts=["TRAINER.DPT.N_CTX", "4", "TRAINER.DPT.CTX_INIT", "a photo of a"]),
    "PromptSRC": Entry(lr=0.02),
    "MMA": Entry(epochs=4, lr=0.02),
    # N_ITERS 0: OPTIM.MAX_EPOCH ordinary epochs instead of the released 500 iterations per shot
    "CLIPLoRA": Entry(epochs=2, lr=0.005, opts=["TRAINER.CLIPLORA.N_ITERS", "0"]),
    "HiCroPL": Entry(lr=0.01, opts=["TRAINER.HICROPL.N_CTX", "4"]),  # "a photo of a", not 16 random words
    "MMRL": Entry(lr=0.005),
    "CoPrompt": Entry(epochs=3, lr=0.02),
    "LwEIB": Entry(epochs=2),
    "TCP": Entry(epochs=6, lr=0.02, opts=["DATALOADER.TRAIN_X.BATCH_SIZE", "8"]),
}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    shapes.write_benchmark(str(root / shapes.FOLDER), sizes=SIZES)
    return str(root)


def prepare(data_root, out, trainer, config, opts, eval_only=False):
    """train.py's run of ``trainer`` with ``config`` (a name in configs/trainers/<trainer>/), built and
    ready to train: (trainer, args)."""
    argv = train_argv(data_root, MINI_CLIP, out, trainer, config, dataset="synthetic_shapes",
                      flags=["--eval-only"] if eval_only else [], opts=[*COMMON, *opts])
    args = train.parse_args(argv)
    return train.prepare(args), args


@pytest.fixture(scope="module")
def zero_shot_clip(data_root, tmp_path_factory):
    """Zero-shot CLIP (template "a photo of a {}.") on the base half: its trainer and test accuracy."""
    return zero_shot(data_root, tmp_path_factory.mktemp("zsclip"), "base")


def zero_shot(data_root, out, half):
    """A ZeroshotCLIP trainer on one half of the benchmark in ``data_root``, and its test accuracy (%)."""
    trainer, _ = prepare(data_root, out, "ZeroshotCLIP", "vit_b16", ["DATASET.SUBSAMPLE_CLASSES", half],
                         eval_only=True)
    try:
        return trainer, trainer.test()
    finally:
        train.release_lock(trainer)
        close_logger()


def readme_line(start):
    with open(os.path.join(REPO, "README.md")) as f:
        lines = [line for line in f if line.startswith(start)]
    assert len(lines) == 1, f"README.md should have one line starting with {start!r}"
    return lines[0]


def test_the_committed_weights_are_the_ones_the_readme_names():
    stated = re.search(r"`([0-9a-f]{64})`", readme_line("SHA-256 of `assets/mini_clip.pt`")).group(1)
    with open(MINI_CLIP, "rb") as f:
        assert hashlib.sha256(f.read()).hexdigest() == stated


def test_the_committed_weights_give_the_readme_zero_shot_accuracy(tmp_path):
    """The full test split (16 images per class; train and val cut down, they are not used)."""
    shapes.write_benchmark(str(tmp_path / "data" / shapes.FOLDER), sizes={"train": 1, "val": 1, "test": 16})
    line = readme_line("Zero-shot accuracy of the committed mini-CLIP")
    stated = {half: float(re.search(rf"{half} (\d+\.\d+)%", line).group(1)) for half in ("base", "new")}
    measured = {half: round(zero_shot(str(tmp_path / "data"), tmp_path / half, half)[1], 2) for half in stated}
    assert measured == stated


@torch.no_grad()
def fit(trainer, items):
    """Cross-entropy and accuracy (%) of ``trainer``'s model on ``items``, without augmentation."""
    trainer.set_model_mode("eval")
    images = torch.stack([trainer.dm.tfm_test(read_image(item.impath)) for item in items])
    labels = torch.tensor([item.label for item in items])
    logits = torch.cat([trainer.model_inference(images[i:i + 32]) for i in range(0, len(items), 32)]).float()
    return F.cross_entropy(logits, labels).item(), 100.0 * (logits.argmax(1) == labels).float().mean().item()


def test_every_trainer_has_a_learning_entry():
    registered = set(project_trainers()) - TRAINING_FREE
    missing = sorted(registered - set(LEARNING))
    assert not missing, (f"trainers without an entry in tests/test_learning.py LEARNING: {missing}. "
                         "Add one (its scripts/ folder, epochs, learning rate) so that it is proven to learn.")
    assert not sorted(set(LEARNING) - registered), "entries for trainers that are not registered"


@pytest.mark.parametrize("name", sorted(LEARNING))
def test_a_few_steps_lower_the_loss_and_beat_zero_shot(name, data_root, zero_shot_clip, tmp_path):
    """On the training shots the loss falls and the accuracy ends above zero-shot CLIP's on the same
    images; on the held-out base test images the accuracy ends above zero-shot CLIP's too."""
    if name not in TRAINER_REGISTRY.registered_names():
        pytest.fail(f"{name} has an entry in LEARNING but is not registered")
    entry = LEARNING[name]
    opts = ["OPTIM.MAX_EPOCH", str(entry.epochs), *entry.opts]
    if entry.lr is not None:
        opts += ["OPTIM.LR", str(entry.lr)]
    config = os.path.splitext(os.path.basename(base2new_config(script_folders()[name], "synthetic_shapes")))[0]
    trainer, args = prepare(data_root, tmp_path / name, name, config, opts)
    try:
        shots = trainer.dm.dataset.train_x
        loss_before, _ = fit(trainer, shots)
        train.run(trainer, args)
        loss_after, accuracy_after = fit(trainer, shots)
        held_out = trainer.test()
    finally:
        train.release_lock(trainer)
        close_logger()
    zs_trainer, zs_held_out = zero_shot_clip
    _, zs_accuracy = fit(zs_trainer, shots)
    assert loss_after < loss_before, f"{name}: training loss {loss_before:.3f} -> {loss_after:.3f}"
    assert accuracy_after > zs_accuracy, (f"{name}: accuracy on the training shots {accuracy_after:.1f}% <= "
                                          f"zero-shot {zs_accuracy:.1f}%")
    assert held_out > zs_held_out, f"{name}: base test accuracy {held_out:.1f}% <= zero-shot {zs_held_out:.1f}%"
