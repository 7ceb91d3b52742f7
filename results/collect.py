"""Find every run under an output root and read its final accuracy.

The folder layouts are those of the experiment scripts (CoCoOp/MaPLe conventions):

    base2new/train_base/<dataset>/shots_<K>/<trainer>/<cfg>/seed<S>   base classes
    base2new/test_new/<dataset>/shots_<K>/<trainer>/<cfg>/seed<S>     new classes (eval-only)
    evaluation/<trainer>/<cfg>_<K>shots/<dataset>/seed<S>             cross-dataset / DG targets
    <dataset>/<trainer>/<cfg>_<K>shots/seed<S>                        few-shot (and the ImageNet
                                                                      source of cross-dataset)

``<dataset>`` is the dataset's config name (``dtd``), or for own data (``image_folder``) its
tag (``DATASET.TAG``, e.g. ``my_flowers``), so that each own dataset has its own runs and rows.

A run's accuracy comes from its ``results.json`` (the completion marker written after the
final result); runs made by other CoOp-family code bases have no marker, so their
``log.txt`` is parsed instead, with the end signal that fits the run.
"""
import json
import os
import re
from dataclasses import dataclass
from typing import Optional

from results.logparse import (LOG_NAME, TEST_END_SIGNALS, TRAIN_END_SIGNALS,
                              log_is_eval_only, metric_from_log)

MARKER_NAME = "results.json"

FEW_SHOT = "few_shot"
TRAIN_BASE = "train_base"
TEST_NEW = "test_new"
EVALUATION = "evaluation"

_SEED_RE = re.compile(r"^seed(\d+)$")
_SHOTS_SUFFIX_RE = re.compile(r"^(.+)_(\d+)shots$")
_SHOTS_DIR_RE = re.compile(r"^shots_(\d+)$")
# Top-level folders that are not datasets of the few-shot layout.
_RESERVED_TOP = {"base2new", EVALUATION}


@dataclass(frozen=True)
class Run:
    kind: str              # FEW_SHOT, TRAIN_BASE, TEST_NEW or EVALUATION
    dataset: str
    trainer: str
    config: str
    shots: int
    seed: int
    path: str
    accuracy: Optional[float]  # None: the run has no final result (crashed, running, killed)


def _subdirs(path):
    try:
        names = sorted(os.listdir(path))
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return []
    return [n for n in names if not n.startswith(".") and os.path.isdir(os.path.join(path, n))]


def read_accuracy(run_dir, eval_only_hint=False):
    """Final test accuracy of one run folder, or None when it has not finished."""
    marker = os.path.join(run_dir, MARKER_NAME)
    if os.path.isfile(marker):
        try:
            with open(marker, "r", encoding="utf-8") as handle:
                marker_data = json.load(handle)
            # train.py nests the metrics ({"metrics": {"accuracy": ...}}); a flat key also works.
            value = marker_data.get("metrics", {}).get("accuracy", marker_data.get("accuracy"))
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return float(value)
        except (OSError, ValueError, AttributeError):
            pass  # a damaged marker: fall back to the log
    log_path = os.path.join(run_dir, LOG_NAME)
    if not os.path.isfile(log_path):
        return None
    value = metric_from_log(log_path, "accuracy", TRAIN_END_SIGNALS)
    if value is None and (eval_only_hint or log_is_eval_only(log_path)):
        value = metric_from_log(log_path, "accuracy", TEST_END_SIGNALS)
    return value


def _seed_runs(folder, kind, dataset, trainer, config, shots):
    for name in _subdirs(folder):
        match = _SEED_RE.match(name)
        if not match:
            continue
        run_dir = os.path.join(folder, name)
        yield Run(kind=kind, dataset=dataset, trainer=trainer, config=config, shots=shots,
                  seed=int(match.group(1)), path=run_dir,
                  accuracy=read_accuracy(run_dir, eval_only_hint=kind in (TEST_NEW, EVALUATION)))


def _base2new_runs(root):
    for kind in (TRAIN_BASE, TEST_NEW):
        kind_dir = os.path.join(root, "base2new", kind)
        for dataset in _subdirs(kind_dir):
            for shots_name in _subdirs(os.path.join(kind_dir, dataset)):
                shots = _SHOTS_DIR_RE.match(shots_name)
                if not shots:
                    continue
                shots_dir = os.path.join(kind_dir, dataset, shots_name)
                for trainer in _subdirs(shots_dir):
                    for config in _subdirs(os.path.join(shots_dir, trainer)):
                        yield from _seed_runs(os.path.join(shots_dir, trainer, config), kind,
                                              dataset, trainer, config, int(shots.group(1)))


def _evaluation_runs(root):
    eval_dir = os.path.join(root, EVALUATION)
    for trainer in _subdirs(eval_dir):
        for config_name in _subdirs(os.path.join(eval_dir, trainer)):
            match = _SHOTS_SUFFIX_RE.match(config_name)
            if not match:
                continue
            config_dir = os.path.join(eval_dir, trainer, config_name)
            for dataset in _subdirs(config_dir):
                yield from _seed_runs(os.path.join(config_dir, dataset), EVALUATION, dataset,
                                      trainer, match.group(1), int(match.group(2)))


def _few_shot_runs(root):
    for dataset in _subdirs(root):
        if dataset in _RESERVED_TOP:
            continue
        for trainer in _subdirs(os.path.join(root, dataset)):
            for config_name in _subdirs(os.path.join(root, dataset, trainer)):
                match = _SHOTS_SUFFIX_RE.match(config_name)
                if not match:
                    continue
                yield from _seed_runs(os.path.join(root, dataset, trainer, config_name), FEW_SHOT,
                                      dataset, trainer, match.group(1), int(match.group(2)))


def collect_runs(root):
    """Every seed run under ``root`` in the known layouts, finished or not."""
    if not os.path.isdir(root):
        raise FileNotFoundError(
            f"Output root '{root}' does not exist or is not a folder. Pass the folder the "
            "experiment scripts wrote to (their OUTPUT, by default ./output).")
    runs = list(_base2new_runs(root)) + list(_evaluation_runs(root)) + list(_few_shot_runs(root))
    return runs
