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


def _require_folder(root):
    if not os.path.isdir(root):
        raise FileNotFoundError(
            f"Output root '{root}' does not exist or is not a folder. Pass the folder the "
            "experiment scripts wrote to (their OUTPUT, by default ./output).")


def _runs_at(root):
    return list(_base2new_runs(root)) + list(_evaluation_runs(root)) + list(_few_shot_runs(root))


def collect_runs(root):
    """Every seed run under ``root`` in the known layouts, finished or not."""
    _require_folder(root)
    return _runs_at(root)


# How far below a given folder output roots are looked for: released logs are often laid out
# as <logs>/<method>/base2new/..., one level deeper than the scripts' OUTPUT.
SEARCH_DEPTH = 2
# How far below it folders named like a protocol folder are named in the message when no runs
# are found (they may hold runs in a layout of their own).
HINT_DEPTH = 4
PROTOCOL_FOLDERS = ("base2new", EVALUATION)
LAYOUTS = (
    "base2new/{train_base,test_new}/<dataset>/shots_<K>/<trainer>/<config>/seed<S>",
    "evaluation/<trainer>/<config>_<K>shots/<dataset>/seed<S>",
    "<dataset>/<trainer>/<config>_<K>shots/seed<S>",
)


def _folders_below(root, depth, descend_into):
    """The folders at most ``depth`` levels below ``root``, level by level; a folder is looked
    into only if ``descend_into(folder)`` is true once its level has been yielded."""
    level = [root]
    for _ in range(depth):
        level = [os.path.join(folder, name) for folder in level for name in _subdirs(folder)]
        yield from level
        level = [folder for folder in level if descend_into(folder)]


def _output_roots_below(root, depth):
    """{folder: runs} for the shallowest folders at most ``depth`` levels below ``root`` that hold
    runs in the known layouts (the inside of such a folder is not searched again)."""
    found = {}
    for folder in _folders_below(root, depth, descend_into=lambda folder: folder not in found):
        runs = _runs_at(folder)
        if runs:
            found[folder] = runs
    return found


def locate_runs(root, depth=SEARCH_DEPTH):
    """The runs under ``root`` and the output roots they came from: ``[root]`` when ``root``
    holds runs itself, else the folders up to ``depth`` levels below it that do (all of them,
    e.g. one per method), else none."""
    _require_folder(root)
    runs = _runs_at(root)
    if runs:
        return runs, [root]
    found = _output_roots_below(root, depth)
    return [run for folder_runs in found.values() for run in folder_runs], list(found)


def _protocol_folders_below(root, depth):
    """Folders named base2new or evaluation at most ``depth`` levels below ``root``."""
    return [folder for folder in _folders_below(root, depth, descend_into=_not_a_run)
            if os.path.basename(folder) in PROTOCOL_FOLDERS]


def _not_a_run(folder):
    return not _SEED_RE.match(os.path.basename(folder))


def _enclosing_output_root(root):
    """The output root above ``root`` when ``root`` is a protocol folder (base2new, evaluation,
    base2new/train_base, ...), else None."""
    path = os.path.normpath(root)
    name = os.path.basename(path)
    if name in (TRAIN_BASE, TEST_NEW):
        path = os.path.dirname(path)
    elif name not in PROTOCOL_FOLDERS:
        return None
    return os.path.dirname(path) or "."


def no_runs_message(root, depth=SEARCH_DEPTH):
    """What was looked for and where, when ``locate_runs`` found nothing; and what to pass."""
    lines = [f"no runs found in {root} nor in the folders up to {depth} levels below it. "
             "Looked for seed folders in the experiment scripts' layouts:"]
    lines += [f"  {layout}" for layout in LAYOUTS]
    outer = _enclosing_output_root(root)
    deeper = [] if outer else _protocol_folders_below(root, HINT_DEPTH)
    if outer:
        lines.append(f"{root} is a protocol folder itself: pass the folder that holds it, {outer}")
    elif deeper:
        lines.append("Protocol folders further down: " + ", ".join(deeper) + ". Pass the folder "
                     f"that holds one of them, e.g. {os.path.dirname(deeper[0])}")
    else:
        lines.append("Pass the folder the experiment scripts wrote to (their OUTPUT, by default "
                     "./output): the one that holds base2new/, evaluation/ or the dataset folders.")
    return "\n".join(lines)


def repeated_runs(runs):
    """Groups of runs of the same job (protocol, dataset, method, shots, seed) found in several
    output roots: the tables count one of each."""
    by_job = {}
    for run in runs:
        key = (run.kind, run.dataset, run.trainer, run.config, run.shots, run.seed)
        by_job.setdefault(key, []).append(run)
    return [group for group in by_job.values() if len(group) > 1]
