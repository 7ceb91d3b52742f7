"""What a run is: the settings that decide its numbers, recorded in results.json and checkpoints.

An output folder that holds one run must never be resumed, or counted as finished, for another
(seed 1 and seed 2 pointed at one folder, another few-shot sample, another config): the numbers
in the tables would then belong to a run nobody asked for.
"""
import json
import os

import yaml

from ..utils.errors import UserInputError


class RunIdentityError(UserInputError, ValueError):
    """An output folder or checkpoint belongs to a run with other settings."""


def run_identity(cfg, config_file="", dataset=None):
    """The identity of the run ``cfg`` describes. Without the built ``dataset`` the few-shot
    image-list hash and an own dataset's resolved tag are unknown (None: not compared)."""
    node = cfg.DATASET
    tag = node.get("TAG", "") or None
    if dataset is not None:
        tag = getattr(dataset, "tag", tag or "")
    return {
        "trainer": cfg.TRAINER.NAME,
        "dataset": node.NAME,
        "tag": tag,
        "seed": cfg.SEED,
        "num_shots": node.NUM_SHOTS,
        "subsample": node.get("SUBSAMPLE_CLASSES", "all"),
        "config": os.path.splitext(os.path.basename(config_file))[0] if config_file else "",
        "fewshot_hash": getattr(dataset, "fewshot_hash", None),
    }


def identity_differences(recorded, current):
    """["seed: 1 there, 2 here", ...] over the keys both know (None: not known, not compared)."""
    return [f"{key}: {recorded[key]!r} there, {current[key]!r} here"
            for key in sorted(set(recorded) & set(current))
            if recorded[key] is not None and current[key] is not None and recorded[key] != current[key]]


def check_identity(recorded, current, what, action):
    """Raise ``RunIdentityError`` when ``recorded`` (of ``what``) is another run than ``current``."""
    differences = identity_differences(recorded or {}, current or {})
    if differences:
        raise RunIdentityError(
            f"{what} holds a run with other settings ({'; '.join(differences)}); refusing to "
            f"{action}. Use another --output-dir for this run, or delete the old run's files if "
            "they are no longer needed.")


def identity_from_output_folder(folder):
    """The identity recorded in an output folder: results.json of a finished run, else, when
    checkpoints of an unfinished run are there to resume, the config.yaml it wrote (all but the
    config name and few-shot hash); {} when the folder holds nothing to resume or skip."""
    results = os.path.join(folder, "results.json")
    if os.path.isfile(results):
        with open(results) as f:
            recorded = json.load(f).get("identity")
        if recorded:
            return recorded
    config = os.path.join(folder, "config.yaml")
    has_checkpoints = os.path.isdir(folder) and any(
        os.path.isfile(os.path.join(folder, name, "checkpoint")) for name in os.listdir(folder))
    if not has_checkpoints or not os.path.isfile(config):
        return {}
    with open(config) as f:
        dump = yaml.safe_load(f) or {}
    dataset = dump.get("DATASET", {})
    return {
        "trainer": dump.get("TRAINER", {}).get("NAME"),
        "dataset": dataset.get("NAME"),
        "tag": dataset.get("TAG") or None,
        "seed": dump.get("SEED"),
        "num_shots": dataset.get("NUM_SHOTS"),
        "subsample": dataset.get("SUBSAMPLE_CLASSES", "all"),
    }
