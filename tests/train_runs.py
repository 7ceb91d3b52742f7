"""train.py driven by the tests: in-process (its command line, exit code and messages), or through a
method's experiment scripts."""
import glob
import hashlib
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import datasets  # noqa: F401  (registers every dataset class)
import train
from dassl.config import get_cfg_default
from dassl.data.datasets import build_dataset
from dassl.utils.logger import close_logger

FAST = ["DATALOADER.NUM_WORKERS", "0", "DATALOADER.TEST.BATCH_SIZE", "16"]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def train_argv(data_root, clip_path, out, trainer="CoOp", config="vit_b16_ep50_ctxv1", dataset="caltech101",
               flags=(), opts=()):
    """``train.py`` arguments: ``config`` is a name in configs/trainers/<trainer>/, ``flags`` are
    command-line flags, ``opts`` KEY VALUE overrides (after the tiny CLIP and FAST)."""
    config_dir = "ZeroshotCLIP" if trainer.startswith("ZeroshotCLIP") else trainer
    return ["--root", str(data_root), "--seed", "1", "--trainer", trainer,
            "--dataset-config-file", f"configs/datasets/{dataset}.yaml",
            "--config-file", f"configs/trainers/{config_dir}/{config}.yaml",
            "--output-dir", str(out), *flags, "MODEL.BACKBONE.PATH", str(clip_path), *FAST, *opts]


def build_dataset_as_train(name, root, shots=-1, seed=1, subsample="all"):
    """The dataset train.py builds for DATASET.NAME ``name`` under ``root``, with Python's random
    seeded first as train.py seeds it (the few-shot draw depends on it)."""
    cfg = get_cfg_default()
    cfg.DATASET.ROOT = str(root)
    cfg.DATASET.NAME = name
    cfg.DATASET.NUM_SHOTS = shots
    cfg.DATASET.SUBSAMPLE_CLASSES = subsample
    cfg.SEED = seed
    random.seed(seed)
    return build_dataset(cfg)


def exit_code(argv):
    """train.main in-process; its exit code (0 when it returns normally)."""
    try:
        train.main(argv)
        return 0
    except SystemExit as exc:
        return exc.code
    finally:
        close_logger()


def error_of(capsys, argv, code=2):
    """The message of a run that must stop with ``code`` and no traceback."""
    assert exit_code(argv) == code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


def run_log(argv):
    """Run to completion and return the run's log.txt."""
    assert exit_code(argv) == 0
    out = argv[argv.index("--output-dir") + 1]
    with open(f"{out}/log.txt") as f:
        return f.read()


@pytest.fixture(autouse=True)
def restore_streams():
    yield
    close_logger()


def base2new_through_scripts(folder, dataset, data_root, clip_path, out, opts=()):
    """``scripts/<folder>/base2new_train.sh`` then ``base2new_test.sh`` on ``dataset`` (seed 1), each
    checked to have run to its result (the test on the new classes): (train run folder, its log, test log)."""
    env = dict(os.environ, DATA=str(data_root), CLIP_PATH=str(clip_path), OUTPUT=str(out), PYTHON=sys.executable,
               OMP_NUM_THREADS="1")
    runs = []
    for script, kind in (("base2new_train.sh", "train_base"), ("base2new_test.sh", "test_new")):
        done = subprocess.run(["bash", f"scripts/{folder}/{script}", dataset, "1", *FAST, *opts], cwd=ROOT, env=env,
                              capture_output=True, text=True)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        found = glob.glob(os.path.join(str(out), "base2new", kind, dataset, "shots_*", "*", "*", "seed1"))
        assert len(found) == 1, found
        runs.append(Path(found[0]))
    train_log, test_log = ((run / "log.txt").read_text() for run in runs)
    assert "Finish training" in train_log and "* accuracy:" in train_log
    assert "SUBSAMPLE NEW CLASSES!" in test_log and "* accuracy:" in test_log
    return runs[0], train_log, test_log


def checkpoint_numel(path):
    """Elements of the trainable tensors a checkpoint saved: the model's trainable-parameter count."""
    return sum(v.numel() for v in torch.load(path, weights_only=True)["state_dict"].values())


def descriptions_fact(path):
    """What run_facts.json records for a run with DATASET.DESCRIPTIONS ``path``."""
    with open(path, "rb") as f:
        return {"source": str(path), "sha256": hashlib.sha256(f.read()).hexdigest()}


class Killed(Exception):
    """A run stopped as a killed job: right after an epoch's checkpoint."""


def run_in_process(argv, kill_after_epoch=None):
    """train.py's run of ``argv`` in this process: (trainer, the epochs it trained, 0-based). With
    ``kill_after_epoch`` (1-based) it stops with ``Killed`` right after that epoch's checkpoint."""
    args = train.parse_args(argv)
    trainer = train.prepare(args)
    epochs, after_epoch = [], trainer.after_epoch

    def after_epoch_then_maybe_die():
        epochs.append(trainer.epoch)
        after_epoch()
        if trainer.epoch + 1 == kill_after_epoch:
            raise Killed
    trainer.after_epoch = after_epoch_then_maybe_die
    try:
        train.run(trainer, args)
    finally:
        close_logger()
    return trainer, epochs
