"""What a run is: the settings that decide its numbers, recorded in results.json and checkpoints.

An output folder that holds one run must never be resumed, or counted as finished, for another
(seed 1 and seed 2 pointed at one folder, another few-shot sample, another config): the numbers
in the tables would then belong to a run nobody asked for. Every config key that can change
the numbers is part of the identity (``training_settings``): a rerun with another learning rate or
number of epochs is another run, neither resumed nor counted as this one.
"""
import json
import os

import yaml

from ..utils.errors import UserInputError

# Keys that say where files are, on which device, how fast or how verbosely a run goes, not what it
# computes: a rerun may change them and still resume the run (a run moved to another machine, more
# loader workers, a crash on an unreadable image rerun with SKIP_BAD_IMAGES). Own data's location is
# compared by "data_root".
NOT_IN_IDENTITY = (
    "OUTPUT_DIR", "RESUME", "DATASET.ROOT", "MODEL.BACKBONE.PATH", "USE_CUDA", "VERBOSE",
    "DATALOADER.NUM_WORKERS", "DATALOADER.TEST.BATCH_SIZE", "DATALOADER.SKIP_BAD_IMAGES",
    "TRAIN.PRINT_FREQ", "TRAIN.CHECKPOINT_FREQ", "MODEL.TEXT_CHUNK",
    "TEST.PER_CLASS_RESULT", "TEST.COMPUTE_CMAT",
    # compared (and named in messages) by the identity's own keys
    "TRAINER.NAME", "DATASET.NAME", "DATASET.TAG", "SEED", "DATASET.NUM_SHOTS", "DATASET.SUBSAMPLE_CLASSES",
)


class RunIdentityError(UserInputError, ValueError):
    """An output folder or checkpoint belongs to a run with other settings."""


def run_identity(cfg, config_file="", dataset=None, settings=None):
    """The identity of the run ``cfg`` describes. Without the built ``dataset`` the few-shot
    image-list hash and an own dataset's resolved tag are unknown (None: not compared).
    ``settings``: the training settings as the user gave them (train.py takes them before the
    trainer may replace the config's stock preprocessing with the backbone's)."""
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
        # Own data is the data in its folder: where it is, and a fingerprint of its files.
        "data_root": data_location(node.NAME, node.ROOT),
        "data_hash": getattr(dataset, "data_hash", None),
        "settings": training_settings(cfg) if settings is None else settings,
    }


def training_settings(cfg):
    """{"OPTIM.LR": 0.002, ...}: every config key but those of ``NOT_IN_IDENTITY``, as plain
    values (tuples as lists), so that they compare equal after a round trip through JSON."""
    from ..utils.torchtools import flatten

    def plain(value):
        return [plain(v) for v in value] if isinstance(value, (list, tuple)) else value

    return {key: plain(value) for key, value in flatten(cfg).items() if key not in NOT_IN_IDENTITY}


def data_location(dataset_name, root):
    """Where the data of a dataset that is defined by its folder (own data) is; None for the
    benchmarks, which are defined by their published split wherever their folder is."""
    from ..data.datasets import DATASET_REGISTRY
    if not root or dataset_name not in DATASET_REGISTRY:
        return None
    locate = getattr(DATASET_REGISTRY.get(dataset_name), "data_location", None)
    return locate(root) if locate is not None else None


def identity_differences(recorded, current):
    """["seed: 1 there, 2 here", "OPTIM.LR: 0.002 there, 0.5 here", ...] over the keys both know
    (None: not known, not compared); the settings are compared key by key."""
    differences = []
    for key in sorted(set(recorded) & set(current)):
        there, here = recorded[key], current[key]
        if there is None or here is None or there == here:
            continue
        if isinstance(there, dict) and isinstance(here, dict):
            differences += [f"{name}: {_shown(there[name])} there, {_shown(here[name])} here"
                            for name in sorted(set(there) & set(here)) if there[name] != here[name]]
        else:
            differences.append(f"{key}: {there!r} there, {here!r} here")
    return differences


def _shown(value):
    return repr(value) if isinstance(value, str) else str(value)


def check_identity(recorded, current, what, action):
    """Raise ``RunIdentityError`` when ``recorded`` (of ``what``) is another run than ``current``."""
    differences = identity_differences(recorded or {}, current or {})
    if differences:
        raise RunIdentityError(
            f"{what} holds a run with other settings ({'; '.join(differences)}); refusing to "
            f"{action}. Use another --output-dir for this run, or delete the old run's files if "
            f"they are no longer needed.{data_hint(differences)}{schedule_hint(differences)}")


def data_hint(differences):
    """What a difference in the own-data keys means, for the message."""
    keys = {difference.split(":", 1)[0] for difference in differences}
    hint = ""
    if "data_root" in keys:
        hint += (" Two own datasets in folders of the same name need names of their own: set "
                 "DATASET.TAG (scripts: TAG=NAME).")
    if "data_hash" in keys:
        hint += " The dataset's files changed since that run (images added, removed or replaced)."
    return hint


def schedule_hint(differences):
    """Why a finished run is not extended by a rerun with more epochs (or another schedule)."""
    if not any(difference.startswith("OPTIM.") for difference in differences):
        return ""
    return (" A run is not extended or re-scheduled in place: its LR schedule spans its own MAX_EPOCH"
            " (a finished run ends at the final LR), so more epochs or another schedule make another"
            " run, trained from the start in its own folder.")


def check_model_trainer(model_dir, trainer, recorded=None, source=None):
    """--eval-only: the model in ``model_dir`` must have been trained by ``trainer``. ``recorded``
    (the trainer a checkpoint records, found in ``source``) or, without it, the trainer the folder's
    results.json or config.yaml names; unknown (a checkpoint of the original code): not compared."""
    if source is None:
        recorded, source = recorded_trainer(model_dir)
    if recorded and trainer and recorded != trainer:
        raise RunIdentityError(
            f'--model-dir "{model_dir}" holds a {recorded} run ({source}), not a {trainer} one; '
            f"refusing to evaluate it as {trainer}. Evaluate it with --trainer {recorded} and that run's "
            f"config file, or pass the --model-dir of a {trainer} run.")


def recorded_trainer(folder):
    """(trainer, "from its <file>") of the run in an output folder; (None, None) when unknown."""
    results = os.path.join(folder, "results.json")
    if os.path.isfile(results):
        with open(results) as f:
            trainer = (json.load(f).get("identity") or {}).get("trainer")
        if trainer:
            return trainer, "from its results.json"
    config = os.path.join(folder, "config.yaml")
    if os.path.isfile(config):
        with open(config) as f:
            dump = yaml.safe_load(f)
        trainer = ((dump or {}).get("TRAINER") or {}).get("NAME") if isinstance(dump, dict) else None
        if trainer:
            return trainer, "from its config.yaml"
    return None, None


def check_model_data(recorded, current, model_dir):
    """--eval-only: a model trained on a dataset of this name and tag must have been trained on
    this data (the same folder, the same files), or its test would be recorded under this data."""
    recorded, current = recorded or {}, current or {}
    if (recorded.get("dataset"), recorded.get("tag")) != (current.get("dataset"), current.get("tag")):
        return  # another dataset (cross-dataset transfer): nothing to compare
    keys = ("data_root", "data_hash")
    differences = identity_differences({k: recorded.get(k) for k in keys}, {k: current.get(k) for k in keys})
    if differences:
        raise RunIdentityError(
            f'The model in "{model_dir}" was trained on other data named "{current.get("tag")}" '
            f"({'; '.join(differences)}); refusing to evaluate it as a model of this data. Pass the "
            f"--model-dir of a run trained on this data, or train one.{data_hint(differences)}")


def identity_from_output_folder(folder):
    """The identity recorded in an output folder: results.json of a finished run, else, when
    checkpoints of an unfinished run are there to resume, the identity its newest checkpoint
    records, else (an older checkpoint) the config.yaml it wrote (all but the config name, few-shot
    hash and settings); {} when the folder holds nothing to resume or skip."""
    results = os.path.join(folder, "results.json")
    if os.path.isfile(results):
        with open(results) as f:
            recorded = json.load(f).get("identity")
        if recorded:
            return recorded
    config = os.path.join(folder, "config.yaml")
    has_checkpoints = os.path.isdir(folder) and any(
        os.path.isfile(os.path.join(folder, name, "checkpoint")) for name in os.listdir(folder))
    if not has_checkpoints:
        return {}
    recorded = checkpoint_identity(folder)
    if recorded:  # config.yaml is rewritten by every start, a refused one too; a checkpoint is not
        return recorded
    if not os.path.isfile(config):
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
        "data_root": data_location(dataset.get("NAME"), dataset.get("ROOT")),
    }


def checkpoint_identity(folder):
    """The identity recorded in the newest checkpoint of the first model in ``folder`` (all of a
    run's models record the same); None when no checkpoint records one."""
    from ..utils.torchtools import load_checkpoint
    for name in sorted(os.listdir(folder)):
        pointer = os.path.join(folder, name, "checkpoint")
        if not os.path.isfile(pointer):
            continue
        with open(pointer) as f:
            path = os.path.join(folder, name, f.readline().strip())
        if os.path.isfile(path):
            checkpoint = load_checkpoint(path)
            return checkpoint.get("identity") if isinstance(checkpoint, dict) else None
    return None
