"""Checkpoint save/load, weight transfer and parameter counting.

Checkpoints hold only tensors and plain containers, so they load with
``torch.load(weights_only=True)``. Checkpoints pickled by the original engine
(which stored scheduler objects) load only on explicit opt-in.
"""
import errno
import os
import os.path as osp
import pickle
import shutil
import warnings
from collections import OrderedDict

import torch
import torch.nn as nn

from .errors import CheckpointError, OutputWriteError, UnusableCheckpointError
from .tools import atomic_write_bytes, atomic_write_text, listdir_nohidden, mkdir_if_missing

__all__ = [
    "save_checkpoint", "load_checkpoint", "resume_from_checkpoint", "read_latest_checkpoint",
    "restore_checkpoint", "load_pretrained_weights",
    "count_num_param", "count_trainable_param", "trainable_state_dict",
    "load_trainable_state_dict", "class_dependent_buffer_names",
    "DEFAULT_CLASS_DEPENDENT_BUFFERS", "ALLOW_PICKLE_ENV", "describe_checkpoint_folder",
    "newest_checkpoint", "require_state_dict", "explain_shape_mismatch",
]

# Buffers that depend on the class names of the current dataset/split; they are
# rebuilt for every class set, so they are never saved nor loaded.
DEFAULT_CLASS_DEPENDENT_BUFFERS = ("token_prefix", "token_suffix", "tokenized_prompts")

# Set to 1 to allow loading pickled (legacy) checkpoints from trusted sources.
ALLOW_PICKLE_ENV = "DASSL_ALLOW_PICKLE"


def _unwrap(model):
    if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        return model.module
    return model


def _strip_module_prefix(state_dict):
    return OrderedDict(
        (k[len("module."):] if k.startswith("module.") else k, v) for k, v in state_dict.items()
    )


def save_checkpoint(state, save_dir, is_best=False, remove_module_from_keys=True, model_name=""):
    """Save ``state`` to ``save_dir/<model_name or model.pth.tar-<epoch>>`` atomically
    and point ``save_dir/checkpoint`` at it."""
    mkdir_if_missing(save_dir)
    if remove_module_from_keys:
        state["state_dict"] = _strip_module_prefix(state["state_dict"])
    if not model_name:
        model_name = "model.pth.tar-" + str(state["epoch"])
    fpath = osp.join(save_dir, model_name)
    writing = fpath
    try:
        atomic_write_bytes(fpath, lambda f: torch.save(state, f))
        print(f"Checkpoint saved to {fpath}")
        writing = osp.join(save_dir, "checkpoint")
        atomic_write_text(writing, osp.basename(fpath) + "\n")
    except OutputWriteError as exc:
        if exc.errno != errno.ENOSPC:
            raise
        raise OutputWriteError(
            f'No space left on "{save_dir}" while writing "{writing}"; {_last_complete(save_dir)}; '
            "free space and run the same command again to resume from it.") from None
    if is_best:
        best_fpath = osp.join(save_dir, "model-best.pth.tar")
        def _copy(dst):
            with open(fpath, "rb") as src:
                shutil.copyfileobj(src, dst)

        atomic_write_bytes(best_fpath, _copy)
        print(f'Best checkpoint saved to "{best_fpath}"')


def _last_complete(save_dir):
    """Where the newest complete checkpoint of ``save_dir`` is, as a clause of a message."""
    pointer = osp.join(save_dir, "checkpoint")
    if osp.isfile(pointer):
        with open(pointer) as f:
            last = osp.join(save_dir, f.readline().strip())
        if osp.isfile(last):
            return f'the last complete checkpoint is "{last}"'
    return "no checkpoint of this run is complete yet (it starts from the beginning)"


# torch.save writes a zip archive; before PyTorch 1.6 a pickle (protocol 2 and up); before 0.4 a tar file.
def _is_torch_file(head):
    return (head.startswith(b"PK\x03\x04") or (len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5)
            or head[257:262] == b"ustar")


def load_checkpoint(fpath, allow_pickle=None):
    """Load a checkpoint with ``weights_only=True``.

    ``allow_pickle=True`` (or the environment variable ``DASSL_ALLOW_PICKLE=1``)
    falls back to full unpickling for checkpoints of the original engine; only do
    that for files you trust, since unpickling can run arbitrary code.
    """
    if fpath is None:
        raise ValueError("File path is None")
    if not osp.exists(fpath):
        raise FileNotFoundError('File is not found at "{}"'.format(fpath))
    if allow_pickle is None:
        allow_pickle = os.environ.get(ALLOW_PICKLE_ENV, "") not in ("", "0")
    with open(fpath, "rb") as f:
        head = f.read(262)
    if not _is_torch_file(head):
        # Neither unpickling nor DASSL_ALLOW_PICKLE can make anything of it: say what it is.
        raise CheckpointError(
            f'"{fpath}" is not a checkpoint: a file written by torch.save starts with a zip or pickle '
            f"header, and this one starts with {head[:16]!r}{' (it is empty)' if not head else ''}. It was "
            "replaced or damaged; copy the file the training run wrote, or train again.")
    map_location = None if torch.cuda.is_available() else "cpu"
    try:
        return torch.load(fpath, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        if not allow_pickle:
            raise UnusableCheckpointError(
                f'Checkpoint "{fpath}" contains pickled Python objects (probably written by '
                "the original Dassl engine), so it was not loaded with weights_only=True. "
                f"If you trust the file, set {ALLOW_PICKLE_ENV}=1 to load it anyway."
            ) from exc
    except Exception as exc:
        print('Unable to load checkpoint from "{}"'.format(fpath))
        raise CheckpointError(
            f'Cannot read the checkpoint "{fpath}": it is truncated or not a checkpoint file '
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}). Train again or "
            "copy the file again.") from None
    warnings.warn(
        f'Loading "{fpath}" with full unpickling ({ALLOW_PICKLE_ENV} is set): only do this '
        "for checkpoints you trust."
    )
    print(f'Warning: unpickling legacy checkpoint "{fpath}"; the file must be trusted')
    try:
        return torch.load(fpath, map_location=map_location, weights_only=False)
    except UnicodeDecodeError:
        return torch.load(fpath, map_location=map_location, weights_only=False,
                          pickle_module=pickle, encoding="latin1")


def class_dependent_buffer_names(model):
    """Last name components of buffers that are rebuilt per class set. A module
    may override the default through a ``class_dependent_buffers`` attribute."""
    return tuple(getattr(_unwrap(model), "class_dependent_buffers", DEFAULT_CLASS_DEPENDENT_BUFFERS))


def trainable_state_dict(model):
    """Parameters with ``requires_grad`` plus persistent buffers, minus the
    class-dependent buffers: what a checkpoint needs and no frozen backbone."""
    module = _unwrap(model)
    skip = class_dependent_buffer_names(module)
    trainable = {n for n, p in module.named_parameters(remove_duplicate=False) if p.requires_grad}
    buffers = {n for n, _ in module.named_buffers(remove_duplicate=False)}
    selected = OrderedDict()
    for key, value in module.state_dict().items():
        if key in trainable or (key in buffers and key.rsplit(".", 1)[-1] not in skip):
            selected[key] = value
    return selected


def load_trainable_state_dict(model, state_dict, source="checkpoint"):
    """Load ``state_dict`` strictly over the subset ``trainable_state_dict`` saves.

    Class-dependent buffers in ``state_dict`` are ignored (they belong to the class
    set of the saving run). A module with ``from_released_state`` first converts a checkpoint
    written by the released code of its method into its own names. Extra keys that exist in the
    model (e.g. frozen weights in a full checkpoint) are loaded too; keys the model lacks are an error.
    """
    module = _unwrap(model)
    skip = class_dependent_buffer_names(module)
    state_dict = _strip_module_prefix(state_dict)
    if hasattr(module, "from_released_state"):  # a checkpoint of the released code, in its names
        state_dict = module.from_released_state(state_dict)
    state_dict = OrderedDict((k, v) for k, v in state_dict.items() if k.rsplit(".", 1)[-1] not in skip)
    expected = set(trainable_state_dict(module).keys())
    known = set(module.state_dict().keys())
    missing = sorted(expected - set(state_dict))
    unexpected = sorted(set(state_dict) - known)
    if missing or unexpected:
        def _short(keys):
            return keys[:8] + (["..."] if len(keys) > 8 else [])

        raise UnusableCheckpointError(
            f"{source} does not match {type(module).__name__}: missing keys {_short(missing)}, "
            f"unexpected keys {_short(unexpected)}. Was it saved by another trainer or with a "
            "different config (e.g. number of context tokens or prompt depth)?"
        )
    module.load_state_dict(state_dict, strict=False)


def read_latest_checkpoint(fdir):
    """(path, content) of the file named in ``fdir/checkpoint`` (the newest save)."""
    pointer = osp.join(fdir, "checkpoint")
    with open(pointer, "r") as f:
        fname = f.readline().strip("\n")
    fpath = osp.join(fdir, fname)
    print(f'Loading checkpoint from "{fpath}"')
    return fpath, load_checkpoint(fpath)


def restore_checkpoint(checkpoint, fpath, model, optimizer=None, scheduler=None):
    """Load weights, optimizer and scheduler state from an already read checkpoint."""
    load_trainable_state_dict(model, checkpoint["state_dict"], source=f'Checkpoint "{fpath}"')
    print("Loaded model weights")
    if optimizer is not None and checkpoint.get("optimizer") is not None:
        optimizer.load_state_dict(checkpoint["optimizer"])
        print("Loaded optimizer")
    if scheduler is not None and checkpoint.get("scheduler") is not None:
        scheduler.load_state_dict(checkpoint["scheduler"])
        print("Loaded scheduler")
    print(f"Previous epoch: {checkpoint['epoch']}")


def resume_from_checkpoint(fdir, model, optimizer=None, scheduler=None):
    """Restore model, optimizer and scheduler from the file named in ``fdir/checkpoint``;
    returns the number of completed epochs stored in it."""
    fpath, checkpoint = read_latest_checkpoint(fdir)
    restore_checkpoint(checkpoint, fpath, model, optimizer, scheduler)
    return checkpoint["epoch"]


def load_pretrained_weights(model, weight_path):
    """Copy every tensor of ``weight_path`` whose name and shape match the model."""
    checkpoint = load_checkpoint(weight_path)
    state_dict = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else checkpoint
    model_dict = model.state_dict()
    matched, discarded = OrderedDict(), []
    for k, v in state_dict.items():
        if k.startswith("module."):
            k = k[7:]
        if k in model_dict and model_dict[k].size() == v.size():
            matched[k] = v
        else:
            discarded.append(k)
    model_dict.update(matched)
    model.load_state_dict(model_dict)
    if not matched:
        warnings.warn(f"Cannot load {weight_path} (check the key names manually)")
    else:
        print(f"Successfully loaded pretrained weights from {weight_path}")
        if discarded:
            print(f"Layers discarded due to unmatched keys or size: {discarded}")


def count_num_param(model=None, params=None):
    """All parameters, trainable or not (as in Dassl)."""
    if model is not None:
        return sum(p.numel() for p in model.parameters())
    if params is not None:
        total = 0
        for p in params:
            if isinstance(p, dict):
                total += sum(q.numel() for q in p["params"])
            else:
                total += p.numel()
        return total
    raise ValueError("model and params must be provided")


def count_trainable_param(model):
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def describe_checkpoint_folder(folder):
    """One line saying which checkpoint files exist in ``folder`` (for error hints)."""
    if not osp.isdir(folder):
        return f'The folder "{folder}" does not exist.'
    files = sorted(f for f in listdir_nohidden(folder) if f.startswith("model"))
    if not files:
        return f'The folder "{folder}" holds no checkpoint files.'
    return f'Checkpoint files in "{folder}": {", ".join(files)}.'


def newest_checkpoint(folder):
    """``model-best.pth.tar`` when a validation-based selection wrote it, else the
    ``model.pth.tar-N`` with the largest N; None when the folder holds neither."""
    if osp.exists(osp.join(folder, "model-best.pth.tar")):
        return "model-best.pth.tar"
    epochs = []
    for fname in os.listdir(folder) if osp.isdir(folder) else []:
        prefix, _, number = fname.rpartition("-")
        if prefix == "model.pth.tar" and number.isdigit():
            epochs.append(int(number))
    return f"model.pth.tar-{max(epochs)}" if epochs else None


def require_state_dict(checkpoint, fpath):
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        found = sorted(checkpoint)[:6] if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise CheckpointError(
            f'"{fpath}" is not a checkpoint of a trained model: it has no "state_dict" '
            f"(found: {found}). Point --model-dir at the output folder of a training run.")


class explain_shape_mismatch:
    """Turn torch's size-mismatch error into one message: file, tensor, both shapes and the
    config keys that differ between the checkpoint's run and this one."""

    def __init__(self, fpath, checkpoint, cfg):
        self.fpath, self.checkpoint, self.cfg = fpath, checkpoint, cfg

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not RuntimeError or "size mismatch" not in str(exc):
            return False
        line = next(l.strip() for l in str(exc).splitlines() if "size mismatch" in l)
        raise CheckpointError(
            f'Checkpoint "{self.fpath}" does not fit this model: {line} '
            f"{differing_shape_keys(self.checkpoint.get('config', ''), self.cfg)}") from None


def differing_shape_keys(saved_config, cfg):
    """The TRAINER.* and MODEL.BACKBONE.* keys whose values differ (what decides shapes)."""
    if not saved_config or cfg is None:
        return "Was it trained with another N_CTX, prompt depth or backbone? Use the same config."
    import yaml
    saved = flatten(yaml.safe_load(saved_config))
    current = flatten(yaml.safe_load(cfg.dump()))
    keys = [k for k in sorted(set(saved) | set(current))
            if k.startswith(("TRAINER.", "MODEL.BACKBONE.")) and k != "MODEL.BACKBONE.PATH"
            and saved.get(k) != current.get(k)]
    if not keys:
        return "The shape-deciding config keys are equal; was the file trained by another code base?"
    return "Config keys that differ (checkpoint -> this run): " + ", ".join(
        f"{k} {saved.get(k)!r} -> {current.get(k)!r}" for k in keys) + "."


def flatten(tree, prefix=""):
    out = {}
    for key, value in (tree or {}).items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out
