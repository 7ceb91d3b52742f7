"""The few-shot and cross-dataset scripts of the 2024-2025 methods run end to end: the command each
script runs (its DRY_RUN output) is run in this process (tiny CLIP, one short epoch); the cross-dataset
test evaluates the weights xd_train.sh trained on ImageNet on another dataset's classes. (Base-to-new
runs through the scripts themselves in each method's own test file.)"""
import os
import shlex
import subprocess
import sys

import pytest

from datasets.fake import make_fake_dataset
from method_configs import descriptions_file
from train_runs import ROOT, restore_streams, run_log  # noqa: F401  (fixture)

SHORT = ["OPTIM.MAX_EPOCH", "1", "OPTIM.WARMUP_EPOCH", "0", "DATALOADER.NUM_WORKERS", "0",
         "DATALOADER.TRAIN_X.BATCH_SIZE", "4", "DATALOADER.TEST.BATCH_SIZE", "16"]
METHODS = [("mmrl", True, True), ("hicropl", True, True), ("lweib", False, True), ("tcp", True, True)]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Fake ImageNet (the cross-dataset source) and DTD, and one descriptions file for all their classes."""
    root = tmp_path_factory.mktemp("data")
    names = []
    for dataset in ("imagenet", "dtd"):
        names += make_fake_dataset(dataset, str(root), num_classes=4, images_per_class=6).classnames
    return str(root), descriptions_file(root, names)


def script_command(method, script, args, data_root, clip_path, out, opts):
    """The train.py arguments ``scripts/<method>/<script>.sh ARGS OPTS`` runs (read from its dry run)."""
    env = dict(os.environ, DRY_RUN="1", DATA=data_root, CLIP_PATH=clip_path, OUTPUT=str(out), PYTHON=sys.executable)
    done = subprocess.run(["bash", f"scripts/{method}/{script}.sh", *args, *opts], cwd=ROOT, env=env,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    command = next(line for line in done.stdout.splitlines() if line.startswith("command: "))
    words = shlex.split(command[len("command: "):])
    return words[words.index("train.py") + 1:]


@pytest.mark.parametrize("method, few_shot, cross_dataset", METHODS, ids=[m[0] for m in METHODS])
def test_few_shot_and_cross_dataset_scripts_run(data, tiny_clip_path, tmp_path, method, few_shot, cross_dataset):
    root, descriptions = data
    opts = SHORT + ["DATASET.DESCRIPTIONS", descriptions]
    if few_shot:
        log = run_log(script_command(method, "few_shot", ["dtd", "1", "2"], root, tiny_clip_path, tmp_path, opts))
        assert "Finish training" in log and "* accuracy:" in log
    if cross_dataset:
        opts = opts + ["DATASET.NUM_SHOTS", "2"]
        log = run_log(script_command(method, "xd_train", ["1"], root, tiny_clip_path, tmp_path, opts))
        assert "Finish training" in log
        target = run_log(script_command(method, "xd_test", ["dtd", "1"], root, tiny_clip_path, tmp_path, opts))
        assert "(epoch = 1)" in target and "* accuracy:" in target
